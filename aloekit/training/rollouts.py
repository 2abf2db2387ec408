"""Conversations as rollouts for other RL stacks: every message carries a ``train`` mask (assistant turns only).

A rollout row is the path a stored conversation took (GRPO's ``rollout`` trees or ``simulate``'s trees),
with its persona and the reward of each assistant turn. A format turns those rows into what a trainer
reads; one module-level registration per format (:func:`rollout_format`):

- ``jsonl``: the rows as they are.
- ``verl``: verl's RL dataset (parquet): ``prompt`` is the opening user message, and
  ``extra_info.interaction_kwargs`` names the interaction and carries the persona, for a verl
  ``BaseInteraction`` that plays the simulated user; ``messages`` keeps the whole conversation.
- ``openrlhf``: OpenRLHF's agent mode (``--input_key prompt --label_key label``): ``label`` is the persona
  and turn limit as JSON, for an agent function that plays the simulated user; ``messages`` for
  ``--multiturn`` SFT.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from aloekit.agents.base import Message
from aloekit.graphs.records import TurnRecord
from aloekit.personas.models import PersonaPair
from aloekit.training.data import path_turns

RowFormatter = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
ROLLOUT_FORMATS: dict[str, tuple[RowFormatter, str]] = {}
"""Format name -> (row converter, file type: ``jsonl`` or ``parquet``)."""
INTERACTION_NAME = "aloekit_simulated_user"


def rollout_format(name: str, file_type: str = "jsonl") -> Callable[[RowFormatter], RowFormatter]:
    """Register a rollout export format under ``name``."""

    def register(function: RowFormatter) -> RowFormatter:
        ROLLOUT_FORMATS[name] = (function, file_type)
        return function

    return register


def rollout_rows(conversations: dict[str, tuple[PersonaPair, int, Sequence[TurnRecord]]]) -> list[dict[str, Any]]:
    """One row per conversation (key -> persona, turn limit, records), along the replies it continued with."""
    paths: dict[str, list[Message]] = {}
    rewards: dict[str, list[float | None]] = {}
    for key, prompt, record in path_turns({k: records for k, (_, _, records) in conversations.items()}):
        continued = record.candidates[record.continued]
        paths[key] = [*prompt, {"role": "assistant", "content": continued.text}]
        rewards.setdefault(key, []).append(continued.reward)
    return [{"conversation_id": key, "persona": {"profile": conversations[key][0].profile.text,
             "personality": conversations[key][0].personality.text}, "max_turns": conversations[key][1],
             "turns": len(rewards[key]), "messages": [{**m, "train": m["role"] == "assistant"} for m in path],
             "rewards": rewards[key]} for key, path in paths.items()]  # fmt: skip


@rollout_format("jsonl")
def jsonl_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rollout rows as they are."""
    return rows


def _opening(row: dict[str, Any]) -> list[dict[str, str]]:
    first = row["messages"][0]
    return [{"role": first["role"], "content": first["content"]}]


def _persona_text(row: dict[str, Any]) -> str:
    return f"Profile: {row['persona']['profile']}\nPersonality: {row['persona']['personality']}"


@rollout_format("verl", file_type="parquet")
def verl_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """verl's RL dataset rows, with the simulated user's persona in ``interaction_kwargs``."""
    return [{"data_source": "aloekit", "prompt": _opening(row), "ability": "personalization",
             "reward_model": {"style": "model", "ground_truth": _persona_text(row)},
             "extra_info": {"index": index, "conversation_id": row["conversation_id"],
                            "interaction_kwargs": {"name": INTERACTION_NAME, "persona": _persona_text(row),
                                                   "max_turns": row["max_turns"]}},
             "messages": row["messages"], "rewards": row["rewards"], "conversation_id": row["conversation_id"]}
            for index, row in enumerate(rows)]  # fmt: skip


@rollout_format("openrlhf")
def openrlhf_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenRLHF agent-mode rows: the opening prompt, the persona as the label."""
    return [{"prompt": _opening(row), "label": json.dumps({"persona": _persona_text(row),
                                                           "max_turns": row["max_turns"]}),
             "messages": row["messages"], "rewards": row["rewards"], "conversation_id": row["conversation_id"]}
            for row in rows]  # fmt: skip
