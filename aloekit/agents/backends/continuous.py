"""Continuous batching for in-process models, through transformers' ``ContinuousBatchingManager``.

Requests join and leave the running batch at every decoding step (paged KV cache), instead of waiting for a
whole static batch to finish. transformers' manager samples every row from one global generator, so a seeded
request would draw differently depending on its neighbours; :class:`SeededPick` replaces its sampling with
the Gumbel-max trick on noise hashed from (seed, step, token), which depends on nothing else, so a seeded
request draws the same tokens in any batch. Stop strings are checked on the streamed tokens and end a request
by cancelling it. A request's timeout counts from its first token, as the static batcher's counts from the
start of its batch: time spent queued behind a full cache is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

_RUNNING: set[ContinuousEngine] = set()
"""Engines not yet closed: held strongly, so one whose client was dropped is still stopped at exit."""


def _stop_running_engines() -> None:
    """Stop every engine still running when the interpreter exits: the manager's generation thread is not a
    daemon, so without this an unclosed client would keep the process alive after its last line."""
    for engine in list(_RUNNING):
        engine.close()


# Called by threading's shutdown before it joins non-daemon threads (as concurrent.futures does); plain
# atexit handlers would run only after that join, which never ends.
threading._register_atexit(_stop_running_engines)  # type: ignore[attr-defined]

MASK32 = 0xFFFFFFFF
GPU_MEMORY_FRACTION = 0.5
"""Default share of free GPU memory for the KV cache: room is left for a second in-process model, for
training beside it, and for the static path's forward passes."""
CPU_CACHE = {"num_blocks": 64, "max_batch_tokens": 512}
"""On CPU, a fixed KV cache (64 blocks of 256 tokens): transformers' CPU default takes 0.6 of the RAM, and a
small fraction of it can leave too few blocks for one batch."""
QUEUED_POLL_S = 0.1
"""How often a request with a timeout checks whether it has started, while it waits for room in the batch."""
THREAD_DEADLINE_S = 600.0
"""Longest wait for the generation thread to allocate its cache and serve, or to record the error it died of."""
MANAGER_NEEDS = ("pause", "register_result_handler")
CONFIG_NEEDS = ("auto_switch_to_flash", "use_async_batching")
MIN_TRANSFORMERS = "5.19"
"""The oldest transformers whose manager and config have what the engine uses (5.18 lacks the config's
fields, 5.17 also ``pause``); the engine's tests pass on 5.19 and 5.24 and are skipped on 5.17 and 5.18."""
STOP_LOOKBACK = 8
"""Tokens before the newest ones that a stop string may start in (more than any stop string's own tokens)."""


@functools.cache
def continuous_batching_available() -> str | None:
    """None when this transformers has what the engine needs, else why not (one line). Checked once per
    process: an unloaded in-process model resolves its engine for each call's cache key."""
    import transformers

    needs = f"continuous batching needs >= {MIN_TRANSFORMERS}"
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        from transformers.generation.continuous_batching import ContinuousBatchingManager
        from transformers.generation.continuous_batching.cb_logits_processors import (  # noqa: F401
            ContinuousBatchingLogitsProcessorList,
        )
    except ImportError as exc:
        return f"transformers {transformers.__version__} has no continuous batching ({needs}): {exc}"
    fields = {field.name for field in dataclasses.fields(ContinuousBatchingConfig)}
    missing = [f"ContinuousBatchingManager.{m}" for m in MANAGER_NEEDS if not hasattr(ContinuousBatchingManager, m)]
    missing += [f"ContinuousBatchingConfig.{f}" for f in CONFIG_NEEDS if f not in fields]
    return f"transformers {transformers.__version__} lacks {missing[0]} ({needs})" if missing else None


def step_key(seed: int, step: int) -> int:
    """A nonzero 31-bit key for one sampled token of a seeded request (0 means greedy)."""
    return (_fmix32(_fmix32(seed & MASK32) ^ _fmix32(step + 0x9E3779B9)) & 0x7FFFFFFF) | 1


def _fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser: every input bit affects every output bit."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def _fmix32_tensor(h: Any) -> Any:
    """:func:`_fmix32` on an int64 tensor of values below 2**32 (products wrap; the mask keeps the low bits)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def uniform_from_bits(bits: Any) -> Any:
    """Uniform floats strictly inside (0, 1) from 32-bit hashes: 23 bits, so that the largest,
    1 - 2**-24, is exact in float32 (24 bits would round up to 1.0 and make the Gumbel noise infinite)."""
    import torch

    return ((bits >> 9).to(torch.float32) + 0.5) / float(1 << 23)


def gumbel_pick(scores: Any, keys: Any) -> Any:
    """Per row, the token a Gumbel-max draw from ``softmax(scores)`` keyed by ``keys`` picks (key 0: argmax),
    as a row of -inf with 0 at the pick, so that any later argmax or multinomial takes exactly that token."""
    import torch

    vocab = scores.shape[-1]
    keys = keys.to(torch.int64) & MASK32
    tokens = _fmix32_tensor(torch.arange(vocab, device=scores.device, dtype=torch.int64) + 0x632BE5AB)
    bits = _fmix32_tensor(keys.unsqueeze(-1) ^ tokens.unsqueeze(0))  # [rows, vocab]
    uniform = uniform_from_bits(bits)
    noisy = torch.where((keys != 0).unsqueeze(-1), scores.float() - torch.log(-torch.log(uniform)), scores.float())
    pick = noisy.argmax(dim=-1, keepdim=True)
    return torch.full_like(scores, float("-inf")).scatter_(-1, pick, 0.0)


@dataclass
class Progress:
    """How far one request has got, written by the generation thread as it samples each token."""

    started: float | None = None
    """``time.monotonic()`` when its first token was sampled (None: still queued or prefilling)."""
    tokens: int = 0
    """Tokens generated before the one being sampled."""


def _seeded_pick_class(progress: dict[str, Progress]) -> type:
    """The logits processor class, recording each request's :class:`Progress` in ``progress`` on the way (it
    sees every request at every step, in the generation thread)."""
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    class SeededPick(ContinuousBatchingLogitsProcessor):
        """Picks each row's token by :func:`gumbel_pick`, keyed per request by its ``seed`` and step."""

        supported_kwargs: dict[str, type] = {"seed": int}
        ignored_kwargs: tuple[str, ...] = ()

        def fill_defaults(self, int32_tensor: Any) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> Any:
            import torch

            keys, now = [], time.monotonic()
            for request in requests_with_new_token:
                state = request.state
                seed = state.logit_processor_kwargs.get("seed")
                # A soft reset (cache full) moves generated tokens into the prompt: count them still.
                moved = len(state.initial_tokens) - state._true_initial_tokens if state._true_initial_tokens else 0
                step = moved + len(state.generated_tokens)
                keys.append(0 if seed is None else step_key(seed, step))
                if (entry := progress.get(state.request_id)) is not None:  # None once its caller stopped waiting
                    entry.tokens = step
                    if entry.started is None:
                        entry.started = now
            return torch.tensor(keys, dtype=torch.int32)

        def __call__(self, scores: Any, tensor_arg: Any) -> Any:
            return gumbel_pick(scores, tensor_arg[: scores.size(0)])

    return SeededPick


class EngineTimeout(TimeoutError):
    """A request still generating ``timeout_s`` after its first token; it has been cancelled."""

    def __init__(self, timeout_s: float, tokens: int) -> None:
        self.timeout_s, self.tokens = timeout_s, tokens
        super().__init__(f"still generating {timeout_s:g} s after its first token ({tokens} tokens)")


class _StopCheck:
    """Finds a request's first stop string in its streamed tokens, decoding only the newest few each time
    (a full decode per token would cost quadratic time in the reply's length)."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], stop: Sequence[str]) -> None:
        self.tokenizer, self.eos_ids, self.stop = tokenizer, set(eos_ids), tuple(stop)
        self.scanned = 0  # tokens already searched up to
        self.lookback = STOP_LOOKBACK + max(len(self.tokenizer.encode(s, add_special_tokens=False)) for s in stop)

    def cut(self, tokens: list[int], *, final: bool) -> str | None:
        """The text before the first stop string, or None when none has appeared. The newest tokens and those
        just before them are searched; ``final``, the whole reply, so that no stop string is ever missed."""
        start = 0 if final else max(0, self.scanned - self.lookback)
        self.scanned = len(tokens)
        text = self._decode(tokens[start:])
        if not any(s in text for s in self.stop):
            return None
        if start:
            text = self._decode(tokens)
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return text[: min(cuts)] if cuts else None

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t not in self.eos_ids], skip_special_tokens=True)


@dataclass
class Generated:
    """What one request produced: its tokens, and why it ended."""

    tokens: list[int]
    finish_reason: str  # "stop" (end of sequence or a stop string), "length"
    text: str | None = None  # set when a stop string cut the text


class ContinuousEngine:
    """One running ``ContinuousBatchingManager`` over a loaded model, with per-request sampling and stop strings."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        eos_ids: Sequence[int],
        *,
        max_new_tokens: int,
        memory_fraction: float | None = None,
    ) -> None:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingLogitsProcessorList,
        )

        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        self.progress: dict[str, Progress] = {}
        """Requests whose caller is waiting, by request id."""
        generation_config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        if memory_fraction is None and model.device.type == "cpu":
            sizes: dict[str, Any] = CPU_CACHE
        else:
            sizes = {"max_memory_percent": memory_fraction or GPU_MEMORY_FRACTION}
        cb_config = ContinuousBatchingConfig(
            **sizes,
            auto_switch_to_flash=False,  # flash kernels may need a download; sdpa is what the model loaded with
            use_async_batching=False,  # a request's step count must be exact when its noise key is computed
        )
        self.manager = model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=cb_config
        )
        # Per-request temperature and top_p (transformers' own CB warpers), then the seeded pick.
        processors = ContinuousBatchingLogitsProcessorList(
            LogitsProcessorList([TemperatureLogitsWarper(1.0), TopPLogitsWarper(1.0)]), per_request_processors=True
        )
        processors.logits_processor.append(_seeded_pick_class(self.progress)())
        processors.tensors_required += 1
        processors._retrieve_processors_kwargs()
        processors.do_processing = True
        self.manager.logit_processor = processors
        with torch.inference_mode():  # the generation thread runs in the caller's inference mode
            self.manager.start()
        _RUNNING.add(self)
        self._wait_until_serving()

    def _wait_until_serving(self) -> None:
        """Return once the generation thread has its cache and serves; raise with its error if it died first
        (a cache that does not fit, say), instead of failing every later request with a vaguer one."""
        self._while_running_until(lambda: self.manager.batch_processor is not None)
        if self.manager.batch_processor is None or not self.manager.is_running():
            self.close()
            raise RuntimeError(self._not_serving())

    def _not_serving(self) -> str:
        """Why the manager takes no requests: the error its generation thread died of, where it has one."""
        error = self.manager.background_thread_status.fatal_error
        if error is not None:
            return f"the continuous batching engine stopped after an error: {type(error).__name__}: {error}"
        if not self.manager.is_running():
            return "the continuous batching engine has stopped"
        if self.manager.batch_processor is None:
            return f"the continuous batching engine did not start within {THREAD_DEADLINE_S:g} s"
        return "the continuous batching engine is stopping"

    async def _refused(self) -> str:
        """:meth:`_not_serving` once a dying generation thread has recorded its error (it fails the requests
        in flight first) or ended."""
        status = self.manager.background_thread_status
        await asyncio.to_thread(self._while_running_until, lambda: status.fatal_error is not None)
        return self._not_serving()

    def _while_running_until(self, condition: Callable[[], bool]) -> None:
        """Wait while the generation thread runs and ``condition()`` is false, at most THREAD_DEADLINE_S."""
        deadline = time.monotonic() + THREAD_DEADLINE_S
        while self.manager.is_running() and not condition() and time.monotonic() < deadline:
            time.sleep(0.01)

    async def generate(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        temperature: float | None,
        top_p: float | None,
        seed: int | None,
        stop: Sequence[str],
        timeout_s: float | None = None,
    ) -> Generated:
        """Run one request to its end; cancelled (and its slot freed) if the caller stops waiting, or with
        :class:`EngineTimeout` once it has generated for ``timeout_s`` seconds."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Generated] = loop.create_future()
        kwargs: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0}  # greedy: neutral warpers, key 0
        if temperature is not None and temperature > 0:
            kwargs = {
                "temperature": float(temperature),
                "top_p": 1.0 if top_p is None else float(top_p),
                "seed": secrets.randbits(31) if seed is None else int(seed),
            }
        request_id = f"aloekit-{uuid.uuid4().hex}"
        stop_check = _StopCheck(self.tokenizer, self.eos_ids, stop) if stop else None

        def on_result(output: Any) -> None:
            if done.done():
                return
            if output.error is not None:
                done.set_exception(RuntimeError(output.error))
                return
            tokens, finished = list(output.generated_tokens), output.is_finished()
            if stop_check is not None and (text := stop_check.cut(tokens, final=finished)) is not None:
                done.set_result(Generated(tokens, "stop", text))
                self._cancel(request_id)
            elif finished:
                ended = bool(tokens) and tokens[-1] in self.eos_ids
                done.set_result(Generated(tokens[:-1] if ended else tokens, "stop" if ended else "length"))

        # The handler and progress record are in place before the request is: one finishing at once is not missed.
        progress = self.progress[request_id] = Progress()
        self.manager.register_result_handler(request_id, on_result)
        added = self.manager.add_request(
            prompt_ids,
            request_id=request_id,
            max_new_tokens=max_tokens,
            streaming=stop_check is not None,
            eos_token_id=self.eos_ids,
            **kwargs,
        )
        try:
            if added is None:
                raise RuntimeError(await self._refused())
            return await self._wait(done, progress, timeout_s)
        finally:
            self.progress.pop(request_id, None)
            if not done.done() or done.cancelled():
                self._cancel(request_id)

    @staticmethod
    async def _wait(done: asyncio.Future[Generated], progress: Progress, timeout_s: float | None) -> Generated:
        """``done``'s result, or :class:`EngineTimeout` once ``timeout_s`` has passed since the first token."""
        if timeout_s is None:
            return await done
        while True:
            if progress.started is None:
                wait = QUEUED_POLL_S
            elif (wait := progress.started + timeout_s - time.monotonic()) <= 0:
                raise EngineTimeout(timeout_s, progress.tokens)
            finished, _ = await asyncio.wait({done}, timeout=wait)
            if finished:
                return done.result()

    def _cancel(self, request_id: str) -> None:
        self.manager.cancel_request(request_id)
        router = self.manager.output_router  # a cancelled request never finishes, so its handler is not dropped
        with router._lock:
            router.result_handlers.pop(request_id, None)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the generation loop so the caller can run the model directly (guided choice, generate())."""
        with self.manager.pause():
            yield

    def close(self) -> None:
        """Stop the generation thread and free the KV cache (a second call does nothing)."""
        _RUNNING.discard(self)
        if self.manager.is_running():
            with contextlib.suppress(Exception):
                self.manager.stop(block=True, timeout=30)
