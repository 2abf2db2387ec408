"""Grow a persona pool by iterative LLM self-generation, keeping only candidates unlike the pool."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autogen_core.models import ChatCompletionClient, UserMessage
from pydantic import Field

from aloekit.config import Settings
from aloekit.cpu_thread import run_off_loop
from aloekit.personas.embedding import Embedder, SimilarityFilter
from aloekit.personas.models import Persona, PersonaKind, normalize_text
from aloekit.personas.pool import PersonaPool
from aloekit.seeds import draw_seed

KIND_GUIDE = {
    "profile": (
        "a profile: 8 to 10 short sentences of objective facts about one person, such as age, job, "
        "where and with whom they live, education, hobbies and current plans"
    ),
    "personality": (
        "a personality: 8 to 10 short sentences, each naming one character trait of one person and how it shows"
    ),
}

PROMPT_TEMPLATE = """Here are some examples, each one is {guide}:

{examples}

Write {n} new ones about {n} different people. Make them as varied as you can: different from the \
examples and from each other in every detail. Keep the same style and length as the examples. \
Write each one on a single line, numbered 1 to {n}, and write nothing else."""


class GenerationConfig(Settings):
    """Settings for :func:`generate_personas`; a value out of range raises ``pydantic.ValidationError``."""

    kind: PersonaKind
    """Which pool to grow."""
    target: int = Field(gt=0)
    """Stop when the pool holds this many personas of ``kind``."""
    examples_per_prompt: int = Field(default=5, gt=0)
    """Random pool entries shown in each prompt."""
    candidates_per_round: int = Field(default=20, gt=0)
    """New entries asked for in each round."""
    threshold: float = Field(default=0.6, gt=0, le=1)
    """A candidate is kept only if its cosine similarity to every pooled entry is at most this (0 < t <= 1)."""
    max_rounds: int = Field(default=100, gt=0)
    """Hard cap on rounds in one call."""
    saturation_rounds: int = Field(default=3, gt=0)
    """Stop after this many consecutive rounds that each add fewer than ``saturation_min_new``."""
    saturation_min_new: int = Field(default=1, ge=0)
    """A round adding fewer than this counts towards saturation."""
    seeds_file: Path | None = None
    """Seeds for an empty pool (default: the seeds shipped with aloekit)."""
    seed: int = 0
    """Seed for the choice of examples."""
    temperature: float = Field(default=0.9, ge=0)
    """Sampling temperature of the generator."""
    max_tokens: int = Field(default=1500, gt=0)
    """Token budget of one generator reply."""
    repetition_penalty: float | None = Field(default=None, gt=0)
    """Penalty on repeated tokens for the generator, where the backend supports it (None: not applied)."""


@dataclass
class RoundResult:
    """What one round produced."""

    round: int
    candidates: int
    accepted: int
    pool_size: int


@dataclass
class GenerationReport:
    """The outcome of :func:`generate_personas`."""

    kind: PersonaKind
    start_size: int
    final_size: int
    stop_reason: str
    rounds: list[RoundResult] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        """Accepted over parsed candidates, across rounds."""
        total = sum(r.candidates for r in self.rounds)
        return sum(r.accepted for r in self.rounds) / total if total else 0.0


_BULLET = re.compile(r"^\s*(?:[-*\u2022\u00b7]+|\(?\d{1,3}\s*[.):\]]|#{1,6})\s+")
_LABEL = re.compile(r"^(?:new\s+)?(?:profile|personality|persona|person|example)\s*#?\d*\s*[:.\-]\s*", re.I)


def _clean(item: str) -> str:
    item = _BULLET.sub("", item.strip()).replace("**", "")
    item = _LABEL.sub("", item.strip())
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'\u201c":
        item = item[1:-1]
    return normalize_text(item.strip("\"'\u201c\u201d "))


def parse_candidates(text: str, min_words: int = 6) -> list[str]:
    """Pull candidate texts out of a messy LLM reply: numbering, bullets, labels, quotes, wrapped lines."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
            if isinstance(data, list):
                items = [d if isinstance(d, str) else d.get("text", "") for d in data if isinstance(d, str | dict)]
                return _dedupe([_clean(i) for i in items], min_words)
        except ValueError:
            pass
    lines = [line for line in text.splitlines() if line.strip()]
    if any(_BULLET.match(line) for line in lines):
        # Numbered list: an item may wrap onto following lines that carry no number.
        items: list[str] = []
        for line in lines:
            if _BULLET.match(line) or not items:
                items.append(line)
            else:
                items[-1] += " " + line.strip()
    else:
        items = lines
    return _dedupe([_clean(i) for i in items], min_words)


def _dedupe(items: list[str], min_words: int) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if len(item.split()) < min_words or item.endswith(":") or item.lower() in seen:
            continue  # too short to be a persona, or a header such as "Here are 20 new profiles:"
        seen.add(item.lower())
        out.append(item)
    return out


def build_prompt(kind: PersonaKind, examples: list[str], n: int) -> str:
    """The generation prompt: a fresh one each round, from examples drawn from the pool."""
    listed = "\n".join(f"{i}. {text}" for i, text in enumerate(examples, start=1))
    return PROMPT_TEMPLATE.format(guide=KIND_GUIDE[kind], examples=listed, n=n)


async def generate_personas(
    pool: PersonaPool,
    client: ChatCompletionClient,
    embedder: Embedder,
    config: GenerationConfig,
    *,
    source: str = "generated",
    on_round: Callable[[RoundResult], None] | None = None,
) -> GenerationReport:
    """Grow the pool of ``config.kind`` to ``config.target``; each round's survivors are saved at once,
    so a stopped run resumes from the stored pool."""
    kind = config.kind
    pool.ensure_seeds(kind, config.seeds_file)
    personas, vectors = await run_off_loop(embedder, pool.embeddings, kind, embedder)
    texts = [p.text for p in personas]
    diversity = SimilarityFilter(vectors if len(vectors) else None, config.threshold)
    report = GenerationReport(kind, start_size=len(texts), final_size=len(texts), stop_reason="target reached")
    # Seeded by the pool size too, so a resumed run does not replay the examples of the first one.
    rng = random.Random(f"{config.seed}:{kind}:{len(texts)}")
    quiet_rounds = 0
    for number in range(1, config.max_rounds + 1):
        if len(texts) >= config.target:
            break
        examples = rng.sample(texts, min(config.examples_per_prompt, len(texts)))
        prompt = build_prompt(kind, examples, config.candidates_per_round)
        options = {"temperature": config.temperature, "max_tokens": config.max_tokens,
                   "seed": draw_seed(config.seed, len(texts), number, f"generate:{kind}")}  # fmt: skip
        if config.repetition_penalty is not None:
            options["repetition_penalty"] = config.repetition_penalty
        result = await client.create([UserMessage(content=prompt, source="user")], extra_create_args=options)
        known = {t.lower() for t in texts}
        candidates = [c for c in parse_candidates(str(result.content)) if c.lower() not in known]
        accepted: list[str] = []
        if candidates:
            candidate_vectors = await run_off_loop(embedder, embedder.embed, candidates)
            room = config.target - len(texts)
            keep = [i for i, ok in enumerate(diversity.admit(candidate_vectors)) if ok][:room]
            accepted = [candidates[i] for i in keep]
            if keep:
                new = [Persona.new(kind, candidates[i], source) for i in keep]
                pool.add(new, candidate_vectors[keep], embedder.name)
        texts.extend(accepted)
        round_result = RoundResult(number, len(candidates), len(accepted), len(texts))
        report.rounds.append(round_result)
        if on_round:
            on_round(round_result)
        quiet_rounds = quiet_rounds + 1 if len(accepted) < config.saturation_min_new else 0
        if quiet_rounds >= config.saturation_rounds and len(texts) < config.target:
            report.stop_reason = f"saturated ({quiet_rounds} rounds added fewer than {config.saturation_min_new})"
            break
    else:
        if len(texts) < config.target:
            report.stop_reason = f"max rounds ({config.max_rounds}) reached"
    report.final_size = len(texts)
    return report
