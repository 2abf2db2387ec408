"""Conversions between autogen ``LLMMessage`` objects and plain ``{"role", "content"}`` dicts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from autogen_core import FunctionCall
from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResultMessage,
    LLMMessage,
    SystemMessage,
    UserMessage,
)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, FunctionCall) for part in content):  # tool calls
        return json.dumps([asdict(call) for call in content])
    if isinstance(content, list):
        return "\n".join(part if isinstance(part, str) else "<image>" for part in content)
    return json.dumps([c.model_dump() if hasattr(c, "model_dump") else str(c) for c in content])


def to_dicts(messages: Sequence[LLMMessage]) -> list[dict[str, str]]:
    """Flatten autogen messages to chat-template dicts (the form models, caches and logs use)."""
    out: list[dict[str, str]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": message.content})
        elif isinstance(message, UserMessage):
            out.append({"role": "user", "content": _text(message.content)})
        elif isinstance(message, AssistantMessage):
            out.append({"role": "assistant", "content": _text(message.content)})
        elif isinstance(message, FunctionExecutionResultMessage):
            out.append({"role": "tool", "content": "\n".join(r.content for r in message.content)})
        else:
            raise TypeError(f"unsupported message type {type(message).__name__}")
    return out


def from_dicts(messages: Iterable[dict[str, str]]) -> list[LLMMessage]:
    """Build autogen messages from ``{"role": ..., "content": ...}`` dicts."""
    out: list[LLMMessage] = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"message {i}: 'content' must be a string")
        if role == "system":
            out.append(SystemMessage(content=content))
        elif role == "user":
            out.append(UserMessage(content=content, source="user"))
        elif role == "assistant":
            out.append(AssistantMessage(content=content, source="assistant"))
        else:
            raise ValueError(f"message {i}: unknown role {role!r} (expected system, user or assistant)")
    return out


def conform(messages: Sequence[dict[str, str]], *, system_role: bool = True) -> list[dict[str, str]]:
    """``messages`` in the shape strict chat templates take: consecutive messages of one role merged and,
    without ``system_role``, the system prompt sent as the start of the first user message."""
    out: list[dict[str, str]] = []
    for message in messages:
        if out and out[-1]["role"] == message["role"]:
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{message['content']}"}
        else:
            out.append(dict(message))
    if not system_role and out and out[0]["role"] == "system":
        system, out = out[0], out[1:]
        if out and out[0]["role"] == "user":
            out[0] = {**out[0], "content": f"{system['content']}\n\n{out[0]['content']}"}
        else:
            out.insert(0, {"role": "user", "content": system["content"]})
    return out


def alternation_error(messages: Sequence[dict[str, str]]) -> str | None:
    """Why ``messages`` break strict alternation (a system message only first, then user, assistant,
    user... from a user message), or None when they keep it."""
    roles = [m["role"] for m in messages]
    if roles[:1] == ["system"]:
        roles = roles[1:]
    if not roles:
        return "has no user message"
    for index, role in enumerate(roles):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            where = "starts" if index == 0 else f"has message {index + 1}"
            return f"{where} with a {role!r} message where a {expected!r} one must come (roles must alternate)"
    return None


def system_in_first_user_message(messages: Sequence[LLMMessage]) -> list[LLMMessage]:
    """``messages`` with a leading system message sent as the start of the first user message, for chat
    templates without a system role (tool calls and results pass through untouched)."""
    if not messages or not isinstance(messages[0], SystemMessage):
        return list(messages)
    system, rest = messages[0].content, list(messages[1:])
    if rest and isinstance(rest[0], UserMessage) and isinstance(rest[0].content, str):
        rest[0] = UserMessage(content=f"{system}\n\n{rest[0].content}", source=rest[0].source)
        return rest
    return [UserMessage(content=system, source="system"), *rest]
