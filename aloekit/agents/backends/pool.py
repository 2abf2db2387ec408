"""``BackendPool``: builds one client per spec and hands each role its own managed view of it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable

from autogen_core.models import ChatCompletionClient

from aloekit.agents.backends.managed import Budget, ManagedClient, UsageLedger
from aloekit.agents.backends.registry import get_backend, parse_spec
from aloekit.config import AloeConfig, GenerationOptions
from aloekit.errors import BackendError, SpecError
from aloekit.store import Store


class BackendPool:
    """Shares what must be shared between roles: one client (one loaded model) per spec, one
    concurrency limit per endpoint, one usage ledger; each role gets a :class:`ManagedClient`.

    Example:
        >>> pool = BackendPool(AloeConfig())
        >>> judge = pool.client("local:smollm2", role="judge")   # doctest: +SKIP
        >>> result = await judge.create(messages, extra_create_args={"max_tokens": 8})  # doctest: +SKIP
    """

    def __init__(
        self,
        config: AloeConfig | None = None,
        *,
        store: Store | None = None,
        run_id: str | None = None,
        budget: Budget | None = None,
    ):
        self.config = config or AloeConfig()
        self.budget = budget
        self.store = store
        self.run_id = run_id
        self.ledger = UsageLedger()
        self._clients: dict[str, ChatCompletionClient] = {}
        self._limiters: dict[str, asyncio.Semaphore] = {}
        self._rng = random.Random(self.config.seed)  # seeds backoff jitter only

    def inner(self, spec: str) -> ChatCompletionClient:
        """The shared unwrapped client for ``spec``, built on first use."""
        parsed = parse_spec(spec)
        if parsed.text not in self._clients:
            backend = get_backend(parsed.prefix)
            try:
                client = backend.factory(parsed, self.config.backend_settings(parsed.text))
            except (BackendError, SpecError):
                raise
            except Exception as exc:  # a plugin factory failing must still give one clear line
                raise BackendError(f"{parsed.text}: could not create the client: {exc}") from exc
            self._clients[parsed.text] = client
        return self._clients[parsed.text]

    def files(self, specs: Iterable[str]) -> dict[str, str]:
        """Which files each in-process spec among ``specs`` answers with (``TransformersChatClient``'s
        ``weights_identity``), read without loading a model; a server, whose weights are not ours to see, has
        no entry."""
        found = {}
        for spec in sorted(set(specs)):
            if get_backend(parse_spec(spec).prefix).batching:
                if (identity := getattr(self.inner(spec), "weights_identity", None)) is not None:
                    found[spec] = identity()
        return found

    def client(self, spec: str, role: str = "default", defaults: GenerationOptions | None = None) -> ManagedClient:
        """A managed client for ``role`` over the shared client for ``spec``."""
        parsed = parse_spec(spec)
        settings = self.config.backend_settings(parsed.text)
        limiter = self._limiters.setdefault(parsed.endpoint, asyncio.Semaphore(settings.max_concurrency))
        return ManagedClient(
            self.inner(parsed.text),
            spec=parsed.text,
            role=role,
            settings=settings,
            limiter=limiter,
            ledger=self.ledger,
            defaults=self.config.generation.merged(defaults),
            store=self.store,
            run_id=self.run_id,
            rng=self._rng,
            budget=self.budget,
        )

    async def aclose(self) -> None:
        """Close every client the pool built."""
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
