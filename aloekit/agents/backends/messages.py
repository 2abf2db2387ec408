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
