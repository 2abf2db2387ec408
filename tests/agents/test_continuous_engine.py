"""The continuous batching engine of in-process models, forced on CPU with the tiny model: the same answers
as the static batcher, seeded draws independent of the batch, stop strings, per-request lengths, guided choice
while it runs, timeouts that count from the first token and free the request, engine errors named in one line,
and the fallback where transformers lacks it."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time

import pytest

from aloekit.agents.backends import BackendPool, TransformersChatClient, from_dicts
from aloekit.agents.backends import continuous as continuous_module
from aloekit.agents.backends.continuous import (
    MIN_TRANSFORMERS,
    ContinuousEngine,
    EngineTimeout,
    Progress,
    _StopCheck,
    gumbel_pick,
    step_key,
    uniform_from_bits,
)
from aloekit.agents.backends.local import resolve_engine
from aloekit.agents.backends.managed import GenerationTimeout
from aloekit.config import AloeConfig
from aloekit.errors import BackendError

# On an older transformers (which pyproject admits) the engine falls back to static batches: a test of the
# engine would then pass or fail for the wrong reason.
needs_engine = pytest.mark.skipif(
    continuous_module.continuous_batching_available() is not None,
    reason=str(continuous_module.continuous_batching_available()),
)

PROMPTS = ["hello", "what is the capital of france", "the cat likes tea", "say one two three"]


def _msgs(text):
    return from_dicts([{"role": "user", "content": text}])


@pytest.fixture
async def engine_client(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir, engine="continuous")
    yield client
    await client.close()


@needs_engine
async def test_greedy_answers_match_the_static_batcher(tiny_model_dir, engine_client):
    static = TransformersChatClient(tiny_model_dir, engine="static")
    options = {"max_tokens": 12}
    expected = await asyncio.gather(*(static.create(_msgs(p), extra_create_args=options) for p in PROMPTS))
    got = await asyncio.gather(*(engine_client.create(_msgs(p), extra_create_args=options) for p in PROMPTS))
    assert engine_client.engine == "continuous" and engine_client._continuous is not None
    assert engine_client.batch_sizes == []  # nothing went through the static batcher
    assert [r.content for r in got] == [r.content for r in expected]
    assert [r.usage for r in got] == [r.usage for r in expected]


@needs_engine
async def test_seeded_sampling_does_not_depend_on_the_batch(engine_client):
    options = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 10, "seed": 11}
    alone = await engine_client.create(_msgs("hello"), extra_create_args=options)
    others = [engine_client.create(_msgs(p), extra_create_args={**options, "seed": 100 + i})
              for i, p in enumerate(PROMPTS[1:])]  # fmt: skip
    batched, *_ = await asyncio.gather(engine_client.create(_msgs("hello"), extra_create_args=options), *others)
    assert batched.content == alone.content
    samples = [await engine_client.create(_msgs("hello"), extra_create_args={**options, "seed": s}) for s in range(6)]
    assert len({r.content for r in samples}) > 1  # a seed does change the sample


@needs_engine
async def test_per_request_max_tokens_and_stop_strings(engine_client):
    short, long = await asyncio.gather(
        engine_client.create(_msgs("hello"), extra_create_args={"max_tokens": 2}),
        engine_client.create(_msgs("hello"), extra_create_args={"max_tokens": 12}),
    )
    assert short.usage.completion_tokens == 2 and short.finish_reason == "length"
    assert long.usage.completion_tokens == 12 and long.content.startswith(short.content)
    words = long.content.split()
    assert len(words) >= 3, long.content
    stopped = await engine_client.create(_msgs("hello"), extra_create_args={"max_tokens": 12, "stop": [words[2]]})
    assert stopped.finish_reason == "stop"
    assert stopped.content == long.content[: long.content.index(words[2])].strip()
    assert stopped.usage.completion_tokens < 12  # cancelled when the stop string appeared


@needs_engine
async def test_guided_choice_runs_beside_the_engine(tiny_model_dir, engine_client):
    options = {"guided_choice": ["one", "two", "three"], "logprobs": True, "max_tokens": 1}
    static = await TransformersChatClient(tiny_model_dir, engine="static").create(
        _msgs("say one"), extra_create_args=options
    )
    # A generation and a guided choice at once: the choice pauses the engine, both finish.
    generated, chosen = await asyncio.gather(
        engine_client.create(_msgs("hello"), extra_create_args={"max_tokens": 20}),
        engine_client.create(_msgs("say one"), extra_create_args=options),
    )
    assert generated.usage.completion_tokens == 20
    assert engine_client.batch_sizes == [1]  # the choice went through the static path
    assert chosen.content == static.content
    assert [t.logprob for t in chosen.logprobs[0].top_logprobs] == pytest.approx(
        [t.logprob for t in static.logprobs[0].top_logprobs], abs=1e-4
    )


@needs_engine
async def test_a_timeout_cancels_the_request_and_the_engine_keeps_serving(engine_client):
    await engine_client.create(_msgs("hello"), extra_create_args={"max_tokens": 2})  # loaded and warm
    manager = engine_client._continuous.manager
    cancelled = []
    cancel = manager.cancel_request
    manager.cancel_request = lambda request_id: (cancelled.append(request_id), cancel(request_id))
    options = {"max_tokens": 4000, "timeout_s": 1.0}  # thousands of tiny-model steps: far more than 1 s
    with pytest.raises(GenerationTimeout) as timed_out:
        await engine_client.create(_msgs("the cat likes tea"), extra_create_args=options)
    assert timed_out.value.tokens > 0 and f"after {timed_out.value.tokens} tokens" in str(timed_out.value)
    assert len(cancelled) == 1  # the timed-out request was cancelled in the engine, not only abandoned
    assert manager.output_router.result_handlers == {}  # and left no handler behind
    assert engine_client._continuous.progress == {}
    scheduler = manager.batch_processor.scheduler
    deadline = time.monotonic() + 120
    while scheduler.has_pending_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not scheduler.has_pending_requests()
    after = await engine_client.create(_msgs("hello"), extra_create_args={"max_tokens": 3})
    assert after.usage.completion_tokens == 3


async def test_a_queued_request_times_out_only_after_its_first_token():
    done = asyncio.get_running_loop().create_future()
    progress = Progress()
    waiting = asyncio.create_task(ContinuousEngine._wait(done, progress, timeout_s=0.05))
    await asyncio.sleep(0.3)  # queued behind a full cache for 6x the timeout: not counted
    assert not waiting.done()
    progress.started, progress.tokens = time.monotonic(), 7
    with pytest.raises(EngineTimeout) as timed_out:
        await waiting
    assert timed_out.value.tokens == 7
    finished = asyncio.get_running_loop().create_future()
    finished.set_result("reply")
    assert await ContinuousEngine._wait(finished, Progress(), timeout_s=0.05) == "reply"


class _CharTokenizer:
    """One token per character; counts the characters it decodes."""

    def __init__(self) -> None:
        self.decoded = []

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, tokens, skip_special_tokens=True):
        self.decoded.append(len(tokens))
        return "".join(chr(t) for t in tokens)


def test_stop_strings_are_found_on_the_newest_tokens_only():
    tokenizer = _CharTokenizer()
    check = _StopCheck(tokenizer, eos_ids=[0], stop=["END", "xyz"])
    reply = [ord(c) for c in "a" * 300 + "some words xy"]
    for n in range(1, len(reply) + 1):
        assert check.cut(reply[:n], final=False) is None
    assert max(tokenizer.decoded) <= check.lookback + 1  # never the whole 313-token reply
    reply += [ord("z"), ord("!")]
    assert check.cut(reply[:-1], final=False) == "a" * 300 + "some words "  # spans the last two deliveries
    # A reply delivered in one piece at its end is searched whole.
    late = [ord(c) for c in "END" + "b" * 100]
    assert _StopCheck(tokenizer, [0], ["END"]).cut(late, final=True) == ""


@needs_engine
async def test_an_engine_that_cannot_start_fails_the_load_in_one_line(tiny_model_dir, monkeypatch):
    from transformers.generation.continuous_batching import ContinuousBatchingManager

    def no_room(self):
        raise RuntimeError("no room for the paged cache (test)")

    monkeypatch.setattr(ContinuousBatchingManager, "_create_batch_processor", no_room)
    client = TransformersChatClient(tiny_model_dir, engine="continuous")
    for _ in range(2):  # each call tries the load again and says why it failed
        with pytest.raises(BackendError) as failed:
            await client.create(_msgs("hello"), extra_create_args={"max_tokens": 3})
        message = str(failed.value)
        assert "continuous batching did not start" in message and "no room for the paged cache (test)" in message
        assert "\n" not in message
    assert client.model is None and client._continuous is None  # no half-loaded client serving statically
    assert not continuous_module._RUNNING  # and no generation thread left behind


@needs_engine
def test_an_engine_that_died_names_its_error_without_a_traceback(tiny_model_dir):
    # Under the CLI's logging: the request in flight fails with the error, and every later one with
    # the error the engine died of (not "not accepting requests"); no transformers traceback.
    script = (
        "import asyncio, sys\n"
        "from aloekit.cli.app import setup_logging\n"
        "from aloekit.agents.backends import TransformersChatClient, from_dicts\n"
        "setup_logging(0)\n"
        "client = TransformersChatClient(sys.argv[1], engine='continuous')\n"
        "chat = from_dicts([{'role': 'user', 'content': 'hi'}])\n"
        "async def main():\n"
        "    await client.create(chat, extra_create_args={'max_tokens': 2})\n"
        "    def broken(*args, **kwargs):\n"
        "        raise RuntimeError('device lost (test)')\n"
        "    client.model.forward = broken\n"
        "    for _ in range(2):\n"
        "        try:\n"
        "            await client.create(chat, extra_create_args={'max_tokens': 3})\n"
        "        except Exception as exc:\n"
        "            print(exc)\n"
        "    await client.close()\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tiny_model_dir)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "will be dropped" not in done.stderr, done.stderr[-2000:]
    in_flight, later = done.stdout.strip().splitlines()
    assert "device lost (test)" in in_flight
    assert "stopped after an error: RuntimeError: device lost (test)" in later


@needs_engine
async def test_one_engine_serves_every_role_of_a_pool(tiny_model_dir):
    pool = BackendPool(AloeConfig(backend={"engine": "continuous"}))
    spec = f"hf:{tiny_model_dir}"
    user, judge = pool.client(spec, role="user"), pool.client(spec, role="judge")
    await asyncio.gather(
        user.create(_msgs("hello"), extra_create_args={"max_tokens": 3}),
        judge.create(_msgs("hi"), extra_create_args={"max_tokens": 3}),
    )
    inner = pool.inner(spec)
    assert inner.engine == "continuous" and inner.batch_sizes == []
    await pool.aclose()
    assert inner._continuous is None


def test_engine_choice_and_fallback(monkeypatch, caplog):
    import transformers
    from packaging.version import Version

    # The installed transformers has the engine exactly when it is new enough (the message names the minimum).
    why = continuous_module.continuous_batching_available()
    if Version(transformers.__version__) >= Version(MIN_TRANSFORMERS):
        assert why is None
    else:
        assert why is not None and f">= {MIN_TRANSFORMERS}" in why
    monkeypatch.setattr("aloekit.agents.backends.local.continuous_batching_available", lambda: None)
    assert resolve_engine("auto", "cpu") == "static"
    assert resolve_engine("static", "cuda") == "static"
    assert resolve_engine("auto", "cuda:0") == "continuous"
    assert resolve_engine("continuous", "cpu") == "continuous"
    monkeypatch.setattr("aloekit.agents.backends.local.continuous_batching_available", lambda: "too old (test)")
    with caplog.at_level(logging.WARNING):
        assert resolve_engine("auto", "cuda") == "static"
    assert "too old (test)" in caplog.text


def test_gumbel_pick_samples_the_softmax_and_key_zero_is_greedy():
    import torch

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    probs = torch.softmax(logits, dim=-1)[0]
    draws = 20000
    keys = torch.tensor([step_key(seed, 0) for seed in range(draws)], dtype=torch.int32)
    picks = gumbel_pick(logits.expand(draws, -1), keys)
    assert torch.all(picks.max(dim=-1).values == 0) and torch.all(torch.isinf(picks).sum(dim=-1) == 4)
    counts = torch.bincount(picks.argmax(dim=-1), minlength=5).float() / draws
    assert counts[4] == 0  # a masked token is never drawn
    assert torch.allclose(counts, probs, atol=0.015), (counts, probs)
    greedy = gumbel_pick(logits.expand(3, -1), torch.zeros(3, dtype=torch.int32))
    assert greedy.argmax(dim=-1).tolist() == [0, 0, 0]
    assert step_key(5, 0) != step_key(5, 1) and step_key(5, 0) != step_key(6, 0)
    # The extreme hashes stay strictly inside (0, 1): 1.0 would give infinite noise and pick that token.
    extremes = uniform_from_bits(torch.tensor([0, 2**32 - 1, 2**32 - 256], dtype=torch.int64))
    assert torch.all(extremes > 0) and torch.all(extremes < 1)
    assert all(0 < step_key(s, t) < 2**31 for s in (0, 2**31 - 1, 2**40) for t in range(3))


@needs_engine
def test_a_process_with_an_unclosed_engine_still_exits(tiny_model_dir):
    # The manager's generation thread is not a daemon: an engine nobody closed must not keep Python alive.
    script = (
        "import asyncio, sys\n"
        "from aloekit.agents.backends import TransformersChatClient, from_dicts\n"
        "client = TransformersChatClient(sys.argv[1], engine='continuous')\n"
        "chat = from_dicts([{'role': 'user', 'content': 'hi'}])\n"
        "print(asyncio.run(client.create(chat, extra_create_args={'max_tokens': 3})).usage.completion_tokens)\n"
        "import gc\n"
        "del client\n"  # dropped without close(): its engine must still be stopped
        "gc.collect()\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tiny_model_dir)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stderr[-2000:]
