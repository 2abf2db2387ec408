"""The persona pool in the store: import, embeddings, pair sampling, and the ALOE evaluation set."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from aloekit.errors import AloeError
from aloekit.personas.embedding import Embedder, nearest_neighbour_similarity
from aloekit.personas.io import BadLine, FileWarning, PersonaFileError, iter_persona_file, read_persona_file
from aloekit.personas.models import KINDS, Persona, PersonaKind, PersonaPair
from aloekit.store import Store, utcnow

MAX_KEPT_MESSAGES = 100
"""Bad lines and warnings kept word for word per import; beyond that only counted, so memory stays flat."""


@dataclass
class ImportReport:
    """What one import did; ``bad`` and ``warnings`` keep the first :data:`MAX_KEPT_MESSAGES` of each."""

    added: int = 0
    duplicates: int = 0
    pairs: int = 0
    bad: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bad_count: int = 0
    """Every bad line, including those past the ones kept in ``bad``."""
    warning_count: int = 0
    """Every warning, including those past the ones kept in ``warnings``."""

    def note_bad(self, message: str) -> None:
        """Count a bad line, keeping its message while fewer than the cap are kept."""
        self.bad_count += 1
        if len(self.bad) < MAX_KEPT_MESSAGES:
            self.bad.append(message)

    def note_warning(self, message: str) -> None:
        """Count a warning, keeping its message while fewer than the cap are kept."""
        self.warning_count += 1
        if len(self.warnings) < MAX_KEPT_MESSAGES:
            self.warnings.append(message)


_INSERT_PERSONA = (
    "INSERT OR IGNORE INTO personas (id, kind, text, source, created_at, embedding, embedding_model) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_PAIR = (
    "INSERT OR IGNORE INTO persona_pairs (id, profile_id, personality_id, source, created_at) VALUES (?, ?, ?, ?, ?)"
)


def _insert_rows(conn: sqlite3.Connection, sql: str, rows: Iterable[Sequence[object]]) -> int:
    """Run ``INSERT OR IGNORE`` for each row; returns how many were new (the primary key deduplicates)."""
    before = conn.total_changes
    conn.executemany(sql, rows)
    return conn.total_changes - before


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
        rows = []
        for i, p in enumerate(personas):
            blob = None if embeddings is None else embeddings[i].astype(np.float32).tobytes()
            rows.append((p.id, p.kind, p.text, p.source, p.created_at, blob, embedding_model if blob else None))
        with self.store.transaction() as conn:
            added = _insert_rows(conn, _INSERT_PERSONA, rows)
        return added, len(rows) - added

    def import_file(
        self, path: Path | str, kind: PersonaKind | None = None, skip_bad: bool = False, *, batch_size: int = 1000
    ) -> ImportReport:
        """Import a persona file, streaming it in batches; any bad line aborts the whole file unless ``skip_bad``.

        The file is read one entry at a time and written ``batch_size`` rows at a time, all in one
        transaction: memory does not grow with the file, and a failed import leaves the pool unchanged.
        Duplicates (within the file or already pooled) are found by the database's primary key.
        No embedder is involved; embeddings are computed later, when something needs them.
        """
        path = Path(path)
        report = ImportReport()
        personas: list[tuple[object, ...]] = []
        pairs: list[tuple[object, ...]] = []
        first_bad: str | None = None
        with self.store.transaction() as conn:

            def flush() -> None:
                added = _insert_rows(conn, _INSERT_PERSONA, personas)
                report.added += added
                report.duplicates += len(personas) - added
                _insert_rows(conn, _INSERT_PAIR, pairs)
                personas.clear()
                pairs.clear()

            for item in iter_persona_file(path, kind):
                if isinstance(item, BadLine):
                    if not skip_bad and first_bad is None:
                        first_bad = item.message  # keep reading to count the rest, writing nothing more
                    report.note_bad(item.message)
                elif isinstance(item, FileWarning):
                    report.note_warning(item.message)
                elif first_bad is None:
                    personas.extend((p.id, p.kind, p.text, p.source, p.created_at, None, None) for p in item.personas)
                    if item.is_pair:
                        profile, personality = item.personas
                        pair_id = PersonaPair(profile=profile, personality=personality).id
                        pairs.append((pair_id, profile.id, personality.id, path.name, utcnow()))
                        report.pairs += 1
                    if len(personas) >= batch_size:
                        flush()
            if first_bad is not None:  # raising inside the transaction rolls back every batch written
                more = f" (and {report.bad_count - 1} more bad lines)" if report.bad_count > 1 else ""
                raise PersonaFileError(f"{first_bad}{more}; nothing imported from {path} (use --skip-bad)")
            flush()
        return report

    def ensure_seeds(self, kind: PersonaKind, seeds: Path | None = None) -> int:
        """Import the seed file into an empty pool of ``kind``; returns how many were added."""
        if self.count(kind):
            return 0
        return self.import_file(seeds or seed_file(kind), kind).added

    @staticmethod
    def check_seed_file(path: Path, kind: PersonaKind) -> None:
        """Refuse a seed file :meth:`ensure_seeds` could not start a pool from, in one line naming it."""
        if not load_personas(path, kind):
            raise PersonaFileError(f"{path}: no {kind}s in it")

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
