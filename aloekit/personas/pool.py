"""The persona pool in the store: import, embeddings, pair sampling, and the ALOE evaluation set."""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from aloekit.errors import AloeError
from aloekit.personas.embedding import Embedder, nearest_neighbour_similarity
from aloekit.personas.io import PersonaFileError, read_persona_file
from aloekit.personas.models import KINDS, Persona, PersonaKind, PersonaPair
from aloekit.store import Store, utcnow


@dataclass
class ImportReport:
    """What one import did."""

    added: int = 0
    duplicates: int = 0
    pairs: int = 0
    bad: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def seed_file(kind: PersonaKind) -> Path:
    """The seed personas shipped with aloekit (written for this project, not copied from the paper)."""
    name = "seed_profiles.txt" if kind == "profile" else "seed_personalities.txt"
    return Path(str(resources.files("aloekit.personas") / "data" / name))


class PersonaPool:
    """Personas of both kinds, stored in the project's database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _row_to_persona(self, row: dict) -> Persona:
        return Persona(id=row["id"], kind=row["kind"], text=row["text"], source=row["source"],
                       created_at=row["created_at"])  # fmt: skip

    def list(self, kind: PersonaKind | None = None, limit: int | None = None) -> list[Persona]:
        """Personas in insertion order, optionally of one kind."""
        where, args = ("kind = ?", [kind]) if kind else (None, [])
        rows = self.store.db["personas"].rows_where(where, args, order_by="rowid", limit=limit)
        return [self._row_to_persona(r) for r in rows]

    def count(self, kind: PersonaKind) -> int:
        """How many personas of ``kind`` are pooled."""
        return self.store.conn.execute("SELECT COUNT(*) FROM personas WHERE kind = ?", [kind]).fetchone()[0]

    def add(
        self, personas: Iterable[Persona], embeddings: np.ndarray | None = None, embedding_model: str | None = None
    ) -> tuple[int, int]:
        """Insert personas (skipping ones already pooled) in one transaction; returns (added, duplicates)."""
        personas = list(personas)
        added = duplicates = 0
        seen: set[str] = set()
        with self.store.transaction() as conn:
            for i, persona in enumerate(personas):
                exists = conn.execute("SELECT 1 FROM personas WHERE id = ?", [persona.id]).fetchone()
                if exists or persona.id in seen:
                    duplicates += 1
                    continue
                seen.add(persona.id)
                row = persona.model_dump()
                if embeddings is not None:
                    row |= {"embedding": embeddings[i].astype(np.float32).tobytes(), "embedding_model": embedding_model}
                self.store.db["personas"].insert(row)
                added += 1
        return added, duplicates

    def import_file(self, path: Path | str, kind: PersonaKind | None = None, skip_bad: bool = False) -> ImportReport:
        """Import a persona file; any bad line aborts the whole file unless ``skip_bad``."""
        parsed = read_persona_file(path, kind)
        if parsed.bad and not skip_bad:
            more = f" (and {len(parsed.bad) - 1} more bad lines)" if len(parsed.bad) > 1 else ""
            raise PersonaFileError(f"{parsed.bad[0]}{more}; nothing imported from {parsed.path} (use --skip-bad)")
        report = ImportReport(bad=parsed.bad, warnings=parsed.warnings)
        report.added, report.duplicates = self.add(parsed.personas)
        pairs = [entry.personas for entry in parsed.entries if entry.is_pair]
        with self.store.transaction():
            for profile, personality in pairs:
                pair = PersonaPair(profile=profile, personality=personality)
                row = {"id": pair.id, "profile_id": profile.id, "personality_id": personality.id,
                       "source": parsed.path.name, "created_at": utcnow()}  # fmt: skip
                self.store.db["persona_pairs"].insert(row, ignore=True)
        report.pairs = len(pairs)
        return report

    def ensure_seeds(self, kind: PersonaKind, seeds: Path | None = None) -> int:
        """Import the seed file into an empty pool of ``kind``; returns how many were added."""
        if self.count(kind):
            return 0
        return self.import_file(seeds or seed_file(kind), kind).added

    def embeddings(self, kind: PersonaKind, embedder: Embedder) -> tuple[list[Persona], np.ndarray]:
        """All personas of ``kind`` and their embeddings, computing (and storing) only the missing ones."""
        rows = list(self.store.db["personas"].rows_where("kind = ?", [kind], order_by="rowid"))
        missing = [i for i, r in enumerate(rows) if r["embedding"] is None or r["embedding_model"] != embedder.name]
        if missing:
            vectors = embedder.embed([rows[i]["text"] for i in missing])
            with self.store.transaction():
                for i, vector in zip(missing, vectors, strict=True):
                    blob = np.asarray(vector, dtype=np.float32).tobytes()
                    self.store.db["personas"].update(
                        rows[i]["id"], {"embedding": blob, "embedding_model": embedder.name}
                    )
                    rows[i]["embedding"] = blob
        personas = [self._row_to_persona(r) for r in rows]
        if not rows:
            return personas, np.zeros((0, 0), dtype=np.float32)
        return personas, np.stack([np.frombuffer(r["embedding"], dtype=np.float32) for r in rows])

    def stats(self, embedder: Embedder | None = None) -> dict[str, dict[str, float]]:
        """Counts per kind and, given an embedder, mean and max nearest-neighbour similarity."""
        out: dict[str, dict[str, float]] = {}
        for kind in KINDS:
            entry: dict[str, float] = {"count": self.count(kind)}
            if embedder is not None and entry["count"] >= 2:
                nearest = nearest_neighbour_similarity(self.embeddings(kind, embedder)[1])
                entry |= {"mean_nn_similarity": float(nearest.mean()), "max_nn_similarity": float(nearest.max())}
            out[kind] = entry
        return out

    def sample_pairs(self, n: int, seed: int = 0, exclude: Collection[str] = ()) -> list[PersonaPair]:
        """The paper's scheme: pass over the profiles, giving each a random personality it has not had yet.

        Personas whose id (a content hash) is in ``exclude``, such as the eval set's, are never drawn.
        """
        profiles = [p for p in self.list("profile") if p.id not in exclude]
        personalities = [p for p in self.list("personality") if p.id not in exclude]
        return sample_pairs(profiles, personalities, n, seed)


def sample_pairs(
    profiles: Sequence[Persona], personalities: Sequence[Persona], n: int, seed: int = 0
) -> list[PersonaPair]:
    """Pair profiles with random personalities over repeated passes; no pair repeats; deterministic in ``seed``."""
    if n > len(profiles) * len(personalities):
        raise AloeError(
            f"cannot draw {n} distinct pairs from {len(profiles)} profiles x {len(personalities)} personalities"
        )
    rng = random.Random(seed)
    used: dict[str, set[int]] = {p.id: set() for p in profiles}
    pairs: list[PersonaPair] = []
    while len(pairs) < n:
        for profile in profiles:
            if len(pairs) == n:
                break
            taken = used[profile.id]
            if len(taken) == len(personalities):
                continue
            choice = rng.randrange(len(personalities))
            while choice in taken:  # rejection sampling: cheap while most personalities are free
                choice = rng.randrange(len(personalities))
            taken.add(choice)
            pairs.append(PersonaPair(profile=profile, personality=personalities[choice]))
    return pairs


def eval_set(profiles_file: Path | str, personalities_file: Path | str, n_personalities: int = 5) -> list[PersonaPair]:
    """The ALOE evaluation personas: every eval profile x the first ``n_personalities`` personalities.

    With the paper's files that is 20 x 5 = 100 pairs, in a stable profile-major order.
    """
    profiles = load_personas(profiles_file, "profile")
    personalities = load_personas(personalities_file, "personality")[:n_personalities]
    if len(personalities) < n_personalities:
        raise AloeError(f"{personalities_file}: needs at least {n_personalities} personalities")
    return [PersonaPair(profile=p, personality=q) for p in profiles for q in personalities]


def load_personas(path: Path | str, kind: PersonaKind) -> list[Persona]:
    """Every persona of a file, or an error naming its first bad line."""
    parsed = read_persona_file(path, kind)
    if parsed.bad:
        raise PersonaFileError(parsed.bad[0])
    return parsed.personas
