"""In-process CPU work runs on one thread (aloekit.cpu_thread): a second OpenMP team slows every step 2.5x."""

import asyncio
import contextvars
import os
import signal
import threading

from aloekit import cpu_thread
from aloekit.agents.backends import TransformersChatClient, from_dicts, packed
from aloekit.cpu_thread import as_cpu_thread, call_on_cpu_thread, on_cpu_thread, run_off_loop, run_on_cpu_thread
from aloekit.personas import embedding

REQUEST = contextvars.ContextVar("REQUEST", default="unset")


def where() -> tuple[int, bool]:
    return threading.get_ident(), on_cpu_thread()


async def test_every_call_runs_on_one_thread_that_is_not_the_callers():
    REQUEST.set("mine")
    first, second = await asyncio.gather(run_on_cpu_thread(where), run_on_cpu_thread(where))
    third = await asyncio.to_thread(call_on_cpu_thread, where)  # from another thread, waiting
    assert first == second == third
    assert first[0] != threading.get_ident() and first[1] and not on_cpu_thread()
    assert await run_on_cpu_thread(REQUEST.get) == "mine"  # the caller's context goes along, as to_thread's


def test_a_call_made_on_the_cpu_thread_runs_at_once():
    """A trainer on the CPU thread whose rollouts reach a model: waiting for the busy thread would deadlock."""

    def nested() -> tuple[tuple[int, bool], tuple[int, bool]]:
        return call_on_cpu_thread(where), asyncio.run(run_on_cpu_thread(where))

    outer = call_on_cpu_thread(where)
    # waited for with a deadline: a deadlock fails the test instead of hanging the run
    assert cpu_thread._cpu_executor().submit(nested).result(timeout=120) == (outer, outer)


def test_a_forked_child_gets_its_own_cpu_thread():
    call_on_cpu_thread(where)  # the parent's thread exists: a child inherits the executor, not its thread
    child = os.fork()
    if child == 0:
        signal.alarm(60)  # a child stuck waiting for the parent's thread dies instead of hanging the test
        os._exit(0 if call_on_cpu_thread(where)[1] else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


async def test_an_in_process_cpu_model_loads_and_generates_on_the_cpu_thread(tiny_model_dir, monkeypatch):
    import transformers

    seen: dict[str, bool] = {}
    load, generate = transformers.AutoModelForCausalLM.from_pretrained, TransformersChatClient._generate

    def record_load(*args, **kwargs):
        seen["load"] = on_cpu_thread()
        return load(*args, **kwargs)

    def record_generate(self, batch):
        seen["generate"] = on_cpu_thread()
        return generate(self, batch)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record_load)
    monkeypatch.setattr(TransformersChatClient, "_generate", record_generate)
    client = TransformersChatClient(tiny_model_dir, device="cpu")
    client.load()  # from this (the main) thread, as count_tokens may
    assert seen == {"load": True}
    await client.create(from_dicts([{"role": "user", "content": "hello"}]), extra_create_args={"max_tokens": 2})
    assert seen == {"load": True, "generate": True}


async def test_a_model_off_the_cpu_keeps_to_thread_workers(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir, device="cuda")
    assert not client.uses_cpu_thread
    assert await run_off_loop(client, where) != await run_on_cpu_thread(where)


def test_the_packed_kernel_probe_and_the_embedder_run_on_the_cpu_thread(monkeypatch, tmp_path):
    monkeypatch.setattr(packed, "_probe_packed_kernels", lambda: None if on_cpu_thread() else "wrong thread")
    assert packed.packed_kernels_missing.__wrapped__() is None
    tmp_path.joinpath("model").mkdir()
    embedder = embedding.SentenceTransformerEmbedder(tmp_path / "model")
    monkeypatch.setattr(embedder, "_embed", lambda texts: [on_cpu_thread()] * len(texts))
    assert embedder.embed(["a", "b"]) == [True, True]


def test_the_first_tokenizer_load_converts_on_the_cpu_thread(tiny_model_dir):
    """Converting a GGUF is torch work: a prompt check on the main thread must not do it there."""
    converted = []

    def convert():
        converted.append(on_cpu_thread())
        return tiny_model_dir

    client = TransformersChatClient(convert)
    client.load_tokenizer()
    client.load_tokenizer()
    assert converted == [True]


def test_as_cpu_thread_makes_this_thread_the_cpu_thread_for_a_while():
    def in_a_thread() -> tuple[bool, int, bool]:
        with as_cpu_thread():
            inside = on_cpu_thread(), call_on_cpu_thread(threading.get_ident)
        return inside[0], inside[1], on_cpu_thread()

    result: list[tuple[bool, int, bool]] = []
    thread = threading.Thread(target=lambda: result.append(in_a_thread()))
    thread.start()
    thread.join()
    assert result == [(True, thread.ident, False)]
