"""Evaluation baselines: how the model under test is run, besides as is.

A baseline names the role kind and options the model under test is built with, and whether it is shown
the true persona. ``blind`` and ``oracle`` bound the metric; ``reminder``, ``cot`` and ``self-critique``
are prompting baselines (the same model, prompted to infer and adapt to the user; their multi-call roles are
in :mod:`aloekit.agents.prompting`), the methods a trained model should beat. Add one with
:func:`register_baseline`, from a plugin module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aloekit.errors import ConfigError


@dataclass(frozen=True)
class Baseline:
    """How ``aloe eval --baseline NAME`` builds the model under test."""

    name: str
    description: str
    kind: str = "model_under_test"
    """Role kind of the model under test."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Options of that role (a system prompt, ``oracle``...)."""
    sees_persona: bool = False
    """Whether the model is shown the true persona (only the oracle is)."""


_BASELINES: dict[str, Baseline] = {}


def register_baseline(baseline: Baseline) -> Baseline:
    """Make ``baseline`` available to ``aloe eval --baseline`` (a later registration of a name replaces it)."""
    _BASELINES[baseline.name] = baseline
    return baseline


def get_baseline(name: str) -> Baseline:
    """The registered baseline ``name``; a one-line error listing the known ones otherwise."""
    try:
        return _BASELINES[name]
    except KeyError:
        raise ConfigError(f"unknown baseline {name!r} (known: {', '.join(list_baselines())})") from None


def list_baselines() -> list[str]:
    """Names of every registered baseline, in registration order."""
    return list(_BASELINES)


REMINDER_PROMPT = """You are chatting with one particular person whose preferences you are not told.
As the conversation goes on, notice what they reveal about themselves (their life, interests and
circumstances, and how they like to be talked to) and adapt both what you say and how you say it to
them. Do not ask them to list their preferences. Reply briefly and naturally."""

register_baseline(Baseline("blind", "the model as is: it sees only the conversation"))
register_baseline(Baseline("oracle", "the same model told the true persona (an upper bound)", options={"oracle": True},
                           sees_persona=True))  # fmt: skip
register_baseline(Baseline("reminder", "told to infer the user's preferences and adapt to them",
                           options={"system_prompt": REMINDER_PROMPT}))  # fmt: skip
register_baseline(Baseline("cot", "writes notes about the user first, then replies with them", kind="cot_model"))
register_baseline(Baseline("self-critique", "drafts, critiques the draft against the user, rewrites",
                           kind="self_critique_model"))  # fmt: skip
