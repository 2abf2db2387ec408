"""Persona records: a profile (objective facts) or a personality (traits), and a pair of them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PersonaKind = Literal["profile", "personality"]
KINDS: tuple[PersonaKind, ...] = ("profile", "personality")


def normalize_text(text: str) -> str:
    """Collapse whitespace so the same text always hashes to the same id."""
    return " ".join(text.split())


def persona_id(kind: str, text: str) -> str:
    """Stable content hash of (kind, normalised text)."""
    return hashlib.sha256(f"{kind}\n{normalize_text(text)}".encode()).hexdigest()[:16]


class Persona(BaseModel):
    """One profile or personality text; its id is a hash of its kind and content."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: PersonaKind
    text: str
    source: str = "unknown"
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))

    @classmethod
    def new(cls, kind: PersonaKind, text: str, source: str = "unknown") -> Persona:
        """Build a persona with its content-hash id."""
        clean = normalize_text(text)
        return cls(id=persona_id(kind, clean), kind=kind, text=clean, source=source)


class PersonaPair(BaseModel):
    """The persona of one simulated user: a profile and a personality."""

    model_config = ConfigDict(frozen=True)

    profile: Persona
    personality: Persona

    @property
    def id(self) -> str:
        """Stable id of the pair."""
        return hashlib.sha256(f"{self.profile.id}+{self.personality.id}".encode()).hexdigest()[:16]

    def describe(self) -> str:
        """The persona as one text, as a user simulator or judge is shown it."""
        return f"Profile: {self.profile.text}\nPersonality: {self.personality.text}"
