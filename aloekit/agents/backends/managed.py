"""A ``ChatCompletionClient`` wrapper adding what every backend needs: concurrency limit, timeout,
retries with backoff, usage accounting per role, the call log and an opt-in cache.

A client that queues requests behind its own work (an in-process model) sets ``handles_timeout = True``:
the wrapper then passes ``extra_create_args["timeout_s"]`` instead of timing the call, the client counts it
from the moment the request's generation starts, and a :class:`GenerationTimeout` it raises is not retried.
A client that always returns each guided choice's log-probability sets ``choice_logprobs = True``: judges
whose score mode is ``auto`` then read expected scores from it."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from autogen_core import CancellationToken
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Tool, ToolSchema

from aloekit.agents.backends.messages import system_in_first_user_message, to_dicts
from aloekit.config import BackendSettings, GenerationOptions
from aloekit.errors import BackendError, BudgetExhausted
from aloekit.secrets import redact
from aloekit.store import Store, cache_key

logger = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 409, 425, 429}
TIMEOUT_ENV = "ALOE_BACKEND__TIMEOUT_S"


class GenerationTimeout(BackendError):
    """A generation stopped by its client because it ran past ``timeout_s`` (counted from its start)."""

    def __init__(self, name: str, timeout_s: float, tokens: int) -> None:
        self.name, self.timeout_s, self.tokens = name, timeout_s, tokens
        super().__init__(
            f"{name}: generation took longer than timeout_s = {timeout_s:g} s (stopped after {tokens} tokens)"
        )


def timeout_hint(spec: str) -> str:
    """Where a user raises the timeout of ``spec``: both config tables and the environment variable."""
    return f'raise timeout_s in [backend] or [backends."{spec}"], or set {TIMEOUT_ENV}'


@dataclass
class RoleUsage:
    """Counters for one role's model calls."""

    calls: int = 0
    failures: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


class UsageLedger:
    """Usage per role, shared by every client of a :class:`~aloekit.agents.backends.BackendPool`."""

    def __init__(self) -> None:
        self.by_role: dict[str, RoleUsage] = {}

    def role(self, name: str) -> RoleUsage:
        """The counters for ``name``, created on first use."""
        return self.by_role.setdefault(name, RoleUsage())

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """A JSON-ready copy of every role's counters."""
        return {name: asdict(usage) for name, usage in sorted(self.by_role.items())}


@dataclass
class Budget:
    """Caps on model calls and tokens shared by every client of a pool (None: no cap)."""

    max_calls: int | None = None
    max_tokens: int | None = None
    calls: int = 0
    tokens: int = 0

    def reserve(self) -> None:
        """Count a call about to start, or raise :class:`BudgetExhausted` if a cap is reached."""
        if self.max_calls is not None and self.calls >= self.max_calls:
            raise BudgetExhausted(f"call budget of {self.max_calls} spent")
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetExhausted(f"token budget of {self.max_tokens} spent")
        self.calls += 1

    def spend(self, usage: RequestUsage) -> None:
        """Add a finished call's tokens."""
        self.tokens += usage.prompt_tokens + usage.completion_tokens


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of an SDK error (openai, httpx), if it has one."""
    code = getattr(exc, "status_code", None)
    if code is None:
        code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def is_retryable(exc: BaseException) -> bool:
    """Rate limits, server errors, timeouts, dropped connections and garbled replies are worth retrying."""
    code = status_code(exc)
    if code is not None:
        return code in _RETRYABLE_STATUS or code >= 500
    if isinstance(exc, TimeoutError | ConnectionError | json.JSONDecodeError):
        return True
    # SDK errors without a status: openai.APIConnectionError / APITimeoutError / APIResponseValidationError,
    # httpx.TransportError. Matched by name so no SDK has to be imported here.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"APIConnectionError", "APITimeoutError", "APIResponseValidationError", "TransportError"})


def retry_after_seconds(exc: BaseException) -> float | None:
    """Seconds a server asked us to wait (``Retry-After`` as seconds or HTTP date, or ``retry-after-ms``)."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


def backoff_delay(attempt: int, settings: BackendSettings, retry_after: float | None, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (0-based): Retry-After if given, else jittered exponential."""
    if retry_after is not None:
        return min(retry_after, settings.retry_after_max_s)
    ceiling = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** min(attempt, 60))  # no float overflow
    return ceiling / 2 + rng.uniform(0, ceiling / 2)  # "equal jitter": never zero, spreads retries apart


def describe_error(exc: BaseException, timeout_s: float) -> str:
    """One line saying what went wrong with a call."""
    if isinstance(exc, GenerationTimeout):
        return f"generation took longer than backend.timeout_s = {exc.timeout_s:g} s"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g}s"
    code = status_code(exc)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if code is not None:
        return f"HTTP {code}: {message}"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "APIConnectionError" in names or isinstance(exc, ConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({str(cause).splitlines()[0]})" if cause and str(cause) else ""
        return f"could not connect to the server{detail}"
    return f"{type(exc).__name__}: {message}"


class ManagedClient(ChatCompletionClient):
    """Wraps a backend client for one role; built by :class:`~aloekit.agents.backends.BackendPool`.

    ``extra_create_args`` may hold :class:`~aloekit.config.GenerationOptions` fields (merged over the
    pool's defaults) and backend-specific arguments (passed through). ``create(..., cache=True)`` asks
    for a cached answer; it is served only for deterministic or seeded options. ``settings.timeout_s`` bounds
    each attempt; for a client with ``handles_timeout`` it bounds the generation only (see the module doc).
    """

    component_type = "model"

    def __init__(
        self,
        inner: ChatCompletionClient,
        *,
        spec: str,
        role: str,
        settings: BackendSettings,
        limiter: asyncio.Semaphore,
        ledger: UsageLedger,
        defaults: GenerationOptions | None = None,
        store: Store | None = None,
        run_id: str | None = None,
        rng: random.Random | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.inner = inner
        self.budget = budget
        self.spec = spec
        self.role = role
        self.settings = settings
        self.limiter = limiter
        self.ledger = ledger
        self.defaults = defaults or GenerationOptions()
        self.store = store
        self.run_id = run_id
        self._rng = rng or random.Random()
        self._total = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._actual = RequestUsage(prompt_tokens=0, completion_tokens=0)

    @property
    def choice_logprobs(self) -> bool:
        """Whether the wrapped client always returns every guided choice's first-token log-probability."""
        return getattr(self.inner, "choice_logprobs", False) is True

    def compute_settings(self) -> dict[str, str]:
        """The engine, dtype and weights an in-process model computes with (what fell back, not what was
        asked); empty for a server, whose settings are not ours."""
        compute = getattr(self.inner, "compute_settings", None)
        return compute() if compute is not None else {}

    def _cache_compute(self) -> dict[str, str]:
        """The cache key's part that tells in-process models apart: their compute settings and weights."""
        identity = getattr(self.inner, "weights_identity", None)
        return {**self.compute_settings(), **({"weights_identity": identity()} if identity is not None else {})}

    def _split_args(self, extra: Mapping[str, Any]) -> tuple[GenerationOptions, dict[str, Any]]:
        known = {k: v for k, v in extra.items() if k in GenerationOptions.model_fields}
        passthrough = {k: v for k, v in extra.items() if k not in GenerationOptions.model_fields}
        return self.defaults.merged(known), passthrough

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | str = "auto",
        json_output: bool | type | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
        cache: bool | None = None,
    ) -> CreateResult:
        """Call the backend with limits, retries, logging and (if asked and deterministic) the cache."""
        options, passthrough = self._split_args(extra_create_args)
        create_args = {**options.as_create_args(), **passthrough}
        if not self.settings.system_role:
            messages = system_in_first_user_message(messages)
        message_dicts = to_dicts(messages)
        # An answer made with float weights, or by an earlier version of the model's files, is not served to a
        # run decoding packed ones, or with the files as they are now.
        compute = self._cache_compute()
        key = cache_key(self.spec, message_dicts, create_args, compute)
        # A stored answer has no logprobs, so a request for them is never served from the cache.
        cacheable = options.deterministic and not tools and not passthrough.get("logprobs")
        use_cache = (self.settings.cache if cache is None else cache) and cacheable and self.store is not None
        usage = self.ledger.role(self.role)
        log_row = {
            "run_id": self.run_id,
            "role": self.role,
            "spec": self.spec,
            "cache_key": key,
            "cacheable": int(cacheable),
            "messages": message_dicts,
            "options": json.dumps(create_args, sort_keys=True, default=str),
        }

        if use_cache:
            hit = self.store.cached_response(key)
            if hit is not None:
                usage.calls += 1
                usage.cache_hits += 1
                self._log(
                    {
                        **log_row,
                        "response": hit["response"],
                        "finish_reason": hit["finish_reason"],
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                        "latency_s": 0.0,
                        "attempts": 0,
                        "cached": 1,
                        "status": "ok",
                    }
                )
                return CreateResult(
                    finish_reason=hit["finish_reason"] or "stop",
                    content=hit["response"],
                    usage=RequestUsage(prompt_tokens=0, completion_tokens=0),
                    cached=True,
                )

        # A request queued behind other work on an in-process model must not time out while it waits, so
        # such a client gets the timeout to apply from its generation's start instead of a wait_for here.
        own_timeout = getattr(self.inner, "handles_timeout", False) is True
        call_args = {"timeout_s": self.settings.timeout_s, **create_args} if own_timeout else create_args
        if self.budget is not None:
            self.budget.reserve()
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                async with self.limiter:
                    reply = self.inner.create(
                        messages,
                        tools=tools,
                        tool_choice=tool_choice,
                        json_output=json_output,
                        extra_create_args=call_args,
                        cancellation_token=cancellation_token,
                    )
                    result = await (reply if own_timeout else asyncio.wait_for(reply, timeout=self.settings.timeout_s))
                break
            except Exception as exc:
                # A stopped local generation is not retried: the same prompt on the same model and machine
                # takes as long again (greedy decoding repeats the very tokens), so a retry only doubles the
                # wait; the queue is not the cause any more, since waiting for the model is not timed.
                retryable = is_retryable(exc) and not isinstance(exc, GenerationTimeout)
                if not retryable or attempt >= self.settings.max_retries:
                    reason = redact(describe_error(exc, self.settings.timeout_s))
                    usage.calls += 1
                    usage.failures += 1
                    usage.latency_s += time.monotonic() - started
                    self._log(
                        {
                            **log_row,
                            "latency_s": time.monotonic() - started,
                            "attempts": attempt + 1,
                            "status": "error",
                            "error": reason,
                        }
                    )
                    tries = f"after {attempt + 1} attempts" if attempt else "not retried" if not retryable else ""
                    notes = [tries] if tries else []
                    if isinstance(exc, GenerationTimeout):  # never retried: saying so adds nothing
                        notes = [timeout_hint(self.spec)]
                    elif isinstance(exc, TimeoutError):  # the user's next step: which setting to raise, and where
                        notes.append(timeout_hint(self.spec))
                    raise BackendError(f"{self.spec}: {reason}" + (f" ({'; '.join(notes)})" if notes else "")) from exc
                delay = backoff_delay(attempt, self.settings, retry_after_seconds(exc), self._rng)
                logger.info(
                    "%s (%s): %s; retry %d/%d in %.2fs",
                    self.spec,
                    self.role,
                    redact(describe_error(exc, self.settings.timeout_s)),
                    attempt + 1,
                    self.settings.max_retries,
                    delay,
                )
                usage.retries += 1
                attempt += 1
                await asyncio.sleep(delay)

        latency = time.monotonic() - started
        if (loaded := self._cache_compute()) != compute:  # the model loaded with a fallback (float weights, int8)
            log_row["cache_key"] = cache_key(self.spec, message_dicts, create_args, loaded)  # what made the answer
        if self.budget is not None:
            self.budget.spend(result.usage)
        usage.calls += 1
        usage.prompt_tokens += result.usage.prompt_tokens
        usage.completion_tokens += result.usage.completion_tokens
        usage.latency_s += latency
        self._add_usage(result.usage)
        content = (
            result.content
            if isinstance(result.content, str)
            else json.dumps([asdict(call) for call in result.content])  # FunctionCall is a dataclass
        )
        self._log(
            {
                **log_row,
                "response": content,
                "finish_reason": result.finish_reason,
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
                "latency_s": latency,
                "attempts": attempt + 1,
                "status": "ok",
            }
        )
        return result

    def _log(self, row: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.log_call(row)

    def _add_usage(self, usage: RequestUsage) -> None:
        for total in (self._total, self._actual):
            total.prompt_tokens += usage.prompt_tokens
            total.completion_tokens += usage.completion_tokens

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | str = "auto",
        json_output: bool | type | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """Stream as one chunk: retries and caching need the whole answer before anything is yielded."""
        result = await self.create(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        )
        if isinstance(result.content, str):
            yield result.content
        yield result

    async def close(self) -> None:
        """Nothing to release: the pool owns and closes the wrapped client."""

    def actual_usage(self) -> RequestUsage:
        """Tokens used through this wrapper (cache hits count zero)."""
        return RequestUsage(prompt_tokens=self._actual.prompt_tokens, completion_tokens=self._actual.completion_tokens)

    def total_usage(self) -> RequestUsage:
        """Same as :meth:`actual_usage`: this wrapper is never reset."""
        return RequestUsage(prompt_tokens=self._total.prompt_tokens, completion_tokens=self._total.completion_tokens)

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        """Delegate to the wrapped client."""
        return self.inner.count_tokens(messages, tools=tools)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        """Delegate to the wrapped client."""
        return self.inner.remaining_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> ModelCapabilities:  # type: ignore[override]
        """Deprecated autogen property; delegates."""
        return self.inner.capabilities

    @property
    def model_info(self) -> ModelInfo:
        """Delegate to the wrapped client."""
        return self.inner.model_info
