"""``persona_similarity``: a judge that needs no LLM, from sentence embeddings of the reply and the personas.

A reply is scored by how much closer it is to the true persona than to *other* personas: its cosine
similarity to the true persona is ranked among its similarities to a reference set of personas (the
builtin eval set by default) that share neither the profile nor the personality. A generic reply is about
as close to everyone, so it ranks near the middle; a reply about this person's life ranks near the top.
It measures topical tailoring, not style, tone or length.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from aloekit.agents.base import Answer, RoleOutput, RoleView, register_role
from aloekit.agents.judge import INVALID, Verdict
from aloekit.agents.scorer import Score
from aloekit.cpu_thread import run_off_loop
from aloekit.errors import AloeError, ConfigError
from aloekit.personas.embedding import Embedder, get_embedder
from aloekit.personas.models import PersonaPair


@functools.cache
def shared_embedder(spec: str) -> Embedder:
    """One embedder per spec in a process: the audit, the eval judge and a reward share the loaded model."""
    return get_embedder(spec)


@functools.cache
def reference_personas(reference: str) -> tuple[PersonaPair, ...]:
    """The reference set's persona pairs (``builtin`` or a folder in the paper's format), read once."""
    from aloekit.evaluation.task import load_eval_personas

    return tuple(load_eval_personas(reference))


@register_role("persona_similarity")
class PersonaSimilarity:
    """Scores one reply (a :class:`Score`, as the eval scorer) or picks among several (a :class:`Verdict`,
    as the simulation's preference judge), from embeddings alone: deterministic, no model call.

    The score is ``1 + 4 x F``, F being the share of reference personas the reply is *less* similar to than
    to the true persona (ties count half): 5 means closer to this person than to every other reference
    persona, 3 is what a reply about nothing in particular gets. The preference judge prefers the candidate
    with the higher score (its raw similarity breaks a tie; identical candidates give no verdict).

    ``embedder``: ``minilm`` (all-MiniLM-L6-v2, shipped), ``st:PATH`` or ``openai:[URL#]MODEL``.
    ``reference``: ``builtin`` or an eval-set folder (profile_eval.jsonl and personality_eval.jsonl).
    """

    answers: ClassVar[frozenset[Answer]] = frozenset({"score", "verdict"})

    calls_model = False
    """Its backend and generation options change nothing: an audit of it holds for any of them."""

    def __init__(
        self,
        name: str,
        client: Any = None,
        *,
        embedder: str = "minilm",
        reference: str = "builtin",
        backend: str = "",
        generation: Mapping[str, Any] | None = None,
    ) -> None:
        # client, backend and generation are what every role is built with; this judge calls no model.
        self.name = name
        self.embedder_spec, self.reference = embedder, reference
        try:  # the reference set and the embedder spec fail when the role is built, not at the first turn
            reference_personas(reference)
            self.embedder = shared_embedder(embedder)  # the model itself loads at the first embedding
        except AloeError as exc:
            raise ConfigError(f"role {name!r} (persona_similarity): {exc}") from None
        self._reference_vectors: np.ndarray | None = None

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(list(texts))

    def _references(self) -> tuple[tuple[PersonaPair, ...], np.ndarray]:
        personas = reference_personas(self.reference)
        if self._reference_vectors is None:
            self._reference_vectors = self._embed([p.describe() for p in personas])
        return personas, self._reference_vectors

    def similarity_scores(self, persona: PersonaPair, replies: Sequence[str]) -> list[tuple[float, float, int]]:
        """Per reply: (score 1-5, cosine similarity to the persona, number of other personas ranked against)."""
        personas, vectors = self._references()
        others = np.array([p.profile.id != persona.profile.id and p.personality.id != persona.personality.id
                           for p in personas])  # fmt: skip
        if not others.any():
            raise ConfigError(f"persona_similarity: reference {self.reference!r} has no persona other than this one")
        embedded = self._embed([persona.describe(), *replies])
        truth, reply_vectors = embedded[0], embedded[1:]
        out = []
        for vector in reply_vectors:
            own = float(vector @ truth)
            other = vectors[others] @ vector
            share = (np.sum(other < own) + 0.5 * np.sum(other == own)) / len(other)
            out.append((round(1 + 4 * float(share), 6), round(own, 6), int(len(other))))
        return out

    async def __call__(self, view: RoleView) -> RoleOutput:
        """A Score for one candidate, a Verdict for several."""
        if view.persona is None:
            raise ConfigError(f"role {self.name!r} (persona_similarity) must be shown the persona")
        if not view.candidates:
            raise ConfigError(f"role {self.name!r} (persona_similarity) has no reply to judge")
        scored = await run_off_loop(self.embedder, self.similarity_scores, view.persona, view.candidates)
        raw = [f"score {s:.3f} (similarity {sim:.4f}, ranked against {n} other personas)" for s, sim, n in scored]
        if len(view.candidates) == 1:
            digest = hashlib.sha256(f"{self.embedder_spec}|{self.reference}|{view.persona.id}|{view.candidates[0]}"
                                    .encode()).hexdigest()[:16]  # fmt: skip
            score = Score(score=scored[0][0], raw=raw, retried=False, prompt_hash=digest, mode="similarity")
            return RoleOutput(text=raw[0], value=score)
        keys = [(s, sim) for s, sim, _ in scored]
        best = max(range(len(keys)), key=keys.__getitem__)
        preferred = INVALID if keys.count(keys[best]) > 1 else best
        # Shown in any order it picks the same reply: it agrees with itself in both (--require-agreement keeps it).
        verdict = Verdict(preferred=preferred, order=list(range(len(keys))), raw=raw,
                          agreement=True if preferred != INVALID else None)  # fmt: skip
        return RoleOutput(text="; ".join(raw), value=verdict)
