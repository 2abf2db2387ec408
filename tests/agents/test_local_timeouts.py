"""Timeouts of in-process models: counted from a request's generation start, enforced by stopping the
generation, never retried, and reported with the setting to raise.

Durations are measured in each test on the tiny model and compared with wide relative margins, or a request
is held by a gate the test opens, so the tests hold on a loaded machine; nothing sleeps for a fixed time."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from autogen_core.models import CreateResult, LLMMessage

from aloekit.agents.backends import BackendPool, TransformersChatClient, from_dicts, local
from aloekit.agents.backends.local import _deadline_stop
from aloekit.agents.backends.managed import TIMEOUT_ENV, GenerationTimeout
from aloekit.config import AloeConfig
from aloekit.errors import BackendError
from aloekit.testing import Reply, StubOpenAIServer

T = TypeVar("T")

# The tiny model's greedy answer to this prompt never ends on its own, so max_tokens sets its length; 480
# new tokens stay within its 512 positions.
LONG_PROMPT = "the cat likes tea"
LONG_TOKENS = 480
SHORT_TOKENS = 8
INSTANT = 1e-6  # a timeout every generation is past at its first token


def _msgs(text: str) -> list[LLMMessage]:
    return from_dicts([{"role": "user", "content": text}])


def _long(**extra: Any) -> dict[str, Any]:
    return {"max_tokens": LONG_TOKENS, **extra}


async def _timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started


async def _warm(model_dir: Path, **kwargs: Any) -> TransformersChatClient:
    """A client with its model loaded and warmed up, so later timings are of generation alone."""
    client = TransformersChatClient(model_dir, **kwargs)
    await client.create(_msgs("hello"), extra_create_args={"max_tokens": 2})
    return client


async def _full_generation_s(client: TransformersChatClient) -> float:
    """Seconds the long request takes when nothing stops it."""
    full, seconds = await _timed(client.create(_msgs(LONG_PROMPT), extra_create_args=_long()))
    assert full.usage.completion_tokens == LONG_TOKENS  # the long request really runs to its max_tokens
    return seconds


async def test_a_queued_request_is_not_timed_out_while_it_waits(tiny_model_dir):
    probe = await _warm(tiny_model_dir)
    _, short_s = await _timed(probe.create(_msgs("hello"), extra_create_args={"max_tokens": SHORT_TOKENS}))
    timeout = max(1.0, 10 * short_s)  # ample for the short generation itself, even on a loaded machine
    spec = f"hf:{tiny_model_dir}"
    pool = BackendPool(
        AloeConfig.model_validate({"backend": {"max_batch_size": 1, "timeout_s": timeout, "max_retries": 0}})
    )
    inner = pool.inner(spec)
    await inner.create(_msgs("hello"), extra_create_args={"max_tokens": 2})  # load the model
    # The first request holds the model until the test lets it go: a long generation of known length,
    # whatever the machine's speed.
    gate, real_generate = threading.Event(), inner.model.generate

    def held_generate(*args: Any, **kwargs: Any) -> Any:
        gate.wait()
        return real_generate(*args, **kwargs)

    inner.model.generate = held_generate
    first = asyncio.create_task(inner.create(_msgs(LONG_PROMPT), extra_create_args={"max_tokens": SHORT_TOKENS}))
    second = asyncio.create_task(
        pool.client(spec, role="user").create(_msgs("hello"), extra_create_args={"max_tokens": SHORT_TOKENS})
    )
    try:
        # Queued longer than its timeout: a timeout counted from the queue would end it within this wait.
        done, _ = await asyncio.wait({second}, timeout=1.5 * timeout)
    finally:
        gate.set()
    assert not done
    first_result, second_result = await asyncio.gather(first, second)
    assert inner.batch_sizes[-2:] == [1, 1]  # one after the other, not batched together
    assert first_result.usage.completion_tokens > 0
    assert second_result.usage.completion_tokens > 0
    assert pool.ledger.as_dict()["user"]["failures"] == 0


async def test_a_generation_past_its_deadline_is_stopped(tiny_model_dir):
    client = await _warm(tiny_model_dir)
    full_s = await _full_generation_s(client)
    timeout = full_s / 50
    started = time.monotonic()
    with pytest.raises(GenerationTimeout) as info:
        await client.create(_msgs(LONG_PROMPT), extra_create_args=_long(timeout_s=timeout))
    elapsed = time.monotonic() - started
    full_s = max(full_s, await _full_generation_s(client))  # measured on both sides: the machine's load varies
    assert elapsed < full_s / 2  # stopped near its deadline, not left to finish
    assert info.value.tokens < LONG_TOKENS and info.value.timeout_s == timeout


async def test_only_rows_past_their_deadline_are_timed_out(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir)
    late, on_time = await asyncio.gather(
        client.create(_msgs(LONG_PROMPT), extra_create_args=_long(timeout_s=INSTANT)),
        client.create(_msgs(LONG_PROMPT), extra_create_args={"max_tokens": SHORT_TOKENS}),
        return_exceptions=True,
    )
    assert client.batch_sizes == [2]
    assert isinstance(late, GenerationTimeout) and late.tokens < LONG_TOKENS
    assert isinstance(on_time, CreateResult) and on_time.usage.completion_tokens == SHORT_TOKENS


async def test_deadlines_follow_their_rows_when_others_leave_the_batch(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(local, "ROUND_TOKENS", 2)  # rows 0 and 1 leave after the first call; row 2 goes on alone
    client = TransformersChatClient(tiny_model_dir)
    done, late, alone = await asyncio.gather(
        client.create(_msgs(LONG_PROMPT), extra_create_args={"max_tokens": 2}),
        client.create(_msgs(LONG_PROMPT), extra_create_args=_long(timeout_s=INSTANT)),
        client.create(_msgs(LONG_PROMPT), extra_create_args={"max_tokens": SHORT_TOKENS, "timeout_s": 3600}),
        return_exceptions=True,
    )
    assert client.batch_sizes == [3]
    assert isinstance(done, CreateResult) and done.usage.completion_tokens == 2
    assert isinstance(late, GenerationTimeout) and late.tokens < LONG_TOKENS
    assert isinstance(alone, CreateResult) and alone.usage.completion_tokens == SHORT_TOKENS


async def test_rows_keep_their_own_max_tokens_under_a_deadline(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir)
    short, long = await asyncio.gather(
        client.create(_msgs(LONG_PROMPT), extra_create_args={"max_tokens": 2, "timeout_s": 3600}),
        client.create(_msgs(LONG_PROMPT), extra_create_args={"max_tokens": SHORT_TOKENS, "timeout_s": 3600}),
    )
    assert client.batch_sizes == [2]
    # The short row is finished at its max_tokens and padded after: still a "length" finish, not a stop.
    assert (short.usage.completion_tokens, short.finish_reason) == (2, "length")
    assert (long.usage.completion_tokens, long.finish_reason) == (SHORT_TOKENS, "length")
    assert long.content.startswith(short.content)


def test_a_row_that_ended_before_its_deadline_is_not_timed_out():
    import torch

    later = time.monotonic() + 3600
    deadlines: list[float | None] = [later, later, later, None]
    stop = _deadline_stop(deadlines, [5, 1, 5, 5], prompt_len=2, eos_ids={0}, rows=[0, 1, 2, 3])
    # First token: row 0 ends with an end of sequence, row 1 reaches its max_tokens, rows 2 and 3 go on.
    ids = torch.tensor([[7, 7, 0], [7, 7, 4], [7, 7, 4], [7, 7, 4]])
    assert stop(ids, None).tolist() == [True, True, False, False]
    deadlines[:3] = [0.0, 0.0, 0.0]  # then every deadline passes while the batch runs on
    ids = torch.cat([ids, torch.tensor([[1], [1], [4], [4]])], dim=1)
    assert stop(ids, None).tolist() == [True, True, True, False]
    assert stop.timed_out == [False, False, True, False]


async def test_the_error_names_the_spec_and_the_setting_to_raise(tiny_model_dir):
    spec = f"hf:{tiny_model_dir}"
    pool = BackendPool(AloeConfig.model_validate({"backend": {"timeout_s": INSTANT}}))
    with pytest.raises(BackendError) as info:
        await pool.client(spec).create(_msgs(LONG_PROMPT), extra_create_args=_long())
    message = str(info.value)
    assert message.startswith(f"{spec}: generation took longer than backend.timeout_s = {INSTANT:g} s (")
    assert "raise timeout_s in [backend]" in message
    assert f'[backends."{spec}"]' in message and TIMEOUT_ENV in message
    assert "\n" not in message


async def test_a_timed_out_local_generation_is_not_retried(tiny_model_dir):
    spec = f"hf:{tiny_model_dir}"
    pool = BackendPool(AloeConfig.model_validate({"backend": {"timeout_s": INSTANT, "max_retries": 3}}))
    with pytest.raises(BackendError, match="generation took longer"):
        await pool.client(spec, role="judge").create(_msgs(LONG_PROMPT), extra_create_args=_long())
    assert pool.inner(spec).batch_sizes == [1]  # one generate() call: no retry queued behind it
    usage = pool.ledger.as_dict()["judge"]
    assert (usage["calls"], usage["retries"], usage["failures"]) == (1, 0, 1)


async def test_a_server_timeout_names_the_setting_too():
    with StubOpenAIServer([Reply("hang", delay_s=2)]) as server:
        pool = BackendPool(AloeConfig.model_validate({"backend": {"timeout_s": 0.2, "max_retries": 0}}))
        with pytest.raises(BackendError) as info:
            await pool.client(server.spec()).create(_msgs("hi"))
    message = str(info.value)
    assert message.startswith(f"{server.spec()}: timed out after 0.2s")
    assert f'[backends."{server.spec()}"]' in message and TIMEOUT_ENV in message
