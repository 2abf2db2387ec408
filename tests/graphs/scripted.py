"""Scripted role backends for graph tests: each role answers from its prompt, deterministically."""

from __future__ import annotations

import re

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.graphs import SimulationConfig
from aloekit.personas import Persona, PersonaPair
from tests.helpers import ScriptedClient


def user_reply(messages, options):
    turn = sum(1 for m in messages if m["role"] == "assistant") + 1
    return f"*waves* user message {turn}"


def inducer_reply(messages, options):
    transcript = messages[-1]["content"]
    turn = transcript.count("User:")
    return "None" if turn == 1 else f"Profile: revealed after {turn} turns"


def responder_reply(messages, options):
    hinted = "revealed about themselves" in messages[0]["content"]
    said = messages[-1]["content"]
    return f"{'tailored' if hinted else 'plain'} reply to {said}"


def judge_always(answer):
    def reply(messages, options):
        return answer

    return reply


def judge_prefers_tailored(messages, options):
    """Pick whichever shown message is the tailored one, answering in the shown order."""
    prompt = messages[-1]["content"]
    shown = re.findall(r"Message (\d+):\n(\w+)", prompt)
    for number, first_word in shown:
        if first_word == "tailored":
            return f"Message {number}"
    return "Message 1"


PERSONA = PersonaPair(
    profile=Persona.new("profile", "She is a 30-year-old baker in Lyon who loves jazz."),
    personality=Persona.new("personality", "She is cheerful and talkative."),
)


def scripted_setup(scripted, judge=judge_prefers_tailored, **config_overrides):
    """Register scripted backends per role; return (config, backends, clients)."""
    clients = {
        "user": ScriptedClient(user_reply),
        "inducer": ScriptedClient(inducer_reply),
        "responder": ScriptedClient(responder_reply),
        "judge": ScriptedClient(judge),
    }
    specs = {name: scripted(f"{name}-{id(client)}", client) for name, client in clients.items()}
    config = SimulationConfig(**config_overrides)
    for role in ("user", "inducer", "judge"):
        config = config.with_backend(role, specs[role])
    for responder in config.responders:
        config = config.with_backend(responder.name, specs["responder"])
    backends = BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}))
    return config, backends, clients
