"""Personas: import, iterative self-generation with an embedding-similarity filter, and sampling."""

from aloekit.personas.embedding import (
    Embedder,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    SimilarityFilter,
    get_embedder,
)
from aloekit.personas.generate import GenerationConfig, GenerationReport, generate_personas, parse_candidates
from aloekit.personas.io import (
    BadLine,
    FileWarning,
    PersonaFileError,
    iter_persona_file,
    read_persona_file,
    write_persona_file,
)
from aloekit.personas.models import Persona, PersonaKind, PersonaPair
from aloekit.personas.pool import ImportReport, PersonaPool, eval_set, sample_pairs, seed_file

__all__ = [
    "BadLine",
    "Embedder",
    "FileWarning",
    "GenerationConfig",
    "GenerationReport",
    "ImportReport",
    "OpenAIEmbedder",
    "Persona",
    "PersonaFileError",
    "PersonaKind",
    "PersonaPair",
    "PersonaPool",
    "SentenceTransformerEmbedder",
    "SimilarityFilter",
    "eval_set",
    "generate_personas",
    "get_embedder",
    "iter_persona_file",
    "parse_candidates",
    "read_persona_file",
    "sample_pairs",
    "seed_file",
    "write_persona_file",
]
