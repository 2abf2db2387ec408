"""Shared test helpers: a scripted backend and a tiny random chat model built with no downloads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import math
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autogen_core.models import (
    ChatCompletionClient,
    ChatCompletionTokenLogprob,
    CreateResult,
    ModelInfo,
    RequestUsage,
    TopLogprob,
)

from aloekit.agents.backends.messages import to_dicts

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
WORDS = (
    "hello hi the a cat dog likes runs fast slow red blue what is capital of france paris one two three "
    "four five user assistant system say yes no i you we they good bad music books tea coffee"
).split()


class ScriptedClient(ChatCompletionClient):
    """Answers with ``respond(messages, options)``; an exception in ``failures`` is raised instead, once each.

    ``respond`` may return ``(text, {token: probability})``: the result then carries that distribution as the
    first token's ``top_logprobs``, as an OpenAI-compatible server returns them.
    """

    component_type = "model"

    def __init__(
        self,
        respond: Callable[[list[dict[str, str]], Mapping[str, Any]], str] | None = None,
        failures: Sequence[BaseException] = (),
        delay_s: float = 0.0,
    ) -> None:
        self.respond = respond or (lambda messages, options: f"echo: {messages[-1]['content']}")
        self.failures = list(failures)
        self.delay_s = delay_s
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []

    async def create(
        self,
        messages,
        *,
        tools=(),
        tool_choice="auto",
        json_output=None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token=None,
    ) -> CreateResult:
        dicts = to_dicts(messages)
        self.calls.append((dicts, dict(extra_create_args)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failures:
            raise self.failures.pop(0)
        text = self.respond(dicts, extra_create_args)
        logprobs = None
        if isinstance(text, tuple):
            text, distribution = text
            tops = [TopLogprob(logprob=math.log(p) if p > 0 else -1e4, bytes=list(t.encode()))
                    for t, p in distribution.items()]  # fmt: skip
            logprobs = [ChatCompletionTokenLogprob(token=text, logprob=0.0, top_logprobs=tops)]
        return CreateResult(
            finish_reason="stop",
            content=text,
            cached=False,
            logprobs=logprobs,
            usage=RequestUsage(
                prompt_tokens=sum(len(m["content"].split()) for m in dicts), completion_tokens=len(text.split())
            ),
        )

    async def create_stream(self, messages, **kwargs) -> AsyncGenerator[Any, None]:
        result = await self.create(messages, **kwargs)
        yield result.content
        yield result

    async def close(self) -> None:
        pass

    def actual_usage(self) -> RequestUsage:
        return RequestUsage(prompt_tokens=0, completion_tokens=0)

    def total_usage(self) -> RequestUsage:
        return RequestUsage(prompt_tokens=0, completion_tokens=0)

    def count_tokens(self, messages, *, tools=()) -> int:
        return sum(len(m["content"].split()) for m in to_dicts(messages))

    def remaining_tokens(self, messages, *, tools=()) -> int:
        return 4096 - self.count_tokens(messages)

    @property
    def capabilities(self):  # type: ignore[override]
        return {"vision": False, "function_calling": False, "json_output": False}

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            vision=False, function_calling=False, json_output=False, family="unknown", structured_output=False
        )


def build_tiny_chat_model(path: Path, seed: int = 0, extra_words: tuple[str, ...] = ()) -> Path:
    """Save a 2-layer random Llama with a word-level tokenizer and a chat template to ``path``; ``extra_words``
    join the vocabulary (``abcdef``: transformers' stop-string criterion reads the vocabulary through it)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    # The judges' options (scores 1-5, labels A-E) come last, so the words keep their ids.
    labels = [*"12345", *"ABCDE"]
    vocab = {token: i for i, token in enumerate(specials + WORDS + list(extra_words) + labels)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<pad>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class BagOfWordsEmbedder:
    """A deterministic fake embedder: hashed bag of words, L2-normalised (shared words => similar)."""

    name = "bag-of-words"

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []

    def embed(self, texts):
        import zlib

        import numpy as np

        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(".", " ").replace(",", " ").split():
                out[row, zlib.crc32(word.encode()) % self.dim] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


def seeded_run(store, n: int, turns: int, seed: int = 0, config: dict | None = None) -> str:
    """Seed the persona pool, start a run and create ``n`` pending simulation conversations; returns the run id."""
    from aloekit.graphs import TreeStore
    from aloekit.personas import PersonaPool

    pool = PersonaPool(store)
    pool.ensure_seeds("profile")
    pool.ensure_seeds("personality")
    run_id = store.start_run("test", config or {}, seed)
    TreeStore(store).create_conversations(run_id, pool.sample_pairs(n, seed=seed), turns)
    return run_id


def wait_for(condition: Callable[[], bool], what: str, proc: Any = None, deadline_s: float = 300) -> None:
    """Poll ``condition`` until it holds; fail if ``proc`` ends first or ``deadline_s`` passes (generous: a
    loaded machine is slow, and nothing here waits a fixed time)."""
    import time

    deadline = time.monotonic() + deadline_s
    while not condition():
        assert proc is None or proc.poll() is None, f"ended before {what}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"not {what} within {deadline_s} s"
        time.sleep(0.02)


def count_rows(db: Path, table: str) -> int:
    """Rows in ``table``, read-only: 0 while the database or the table does not exist yet."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return 0


class ThreadHopRecorder(concurrent.futures.ThreadPoolExecutor):
    """An event loop's default executor that records what it is given: a graph node or branch that is a plain
    function runs there (LangGraph's way for sync callables), and concurrent conversations then resume in an
    order set by the threads, so replayed answers (handed out in call order) land on other conversations."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.jobs: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Record the job's name, then run it."""
        job = functools.partial(fn, *args)
        while isinstance(job, functools.partial):  # through contextvars' Context.run and langchain's wrapper
            job = job.args[0] if job.func.__name__ == "run" and job.args else job.func
        inner = [c.cell_contents for c in getattr(job, "__closure__", None) or () if callable(c.cell_contents)]
        self.jobs.append(getattr(inner[0] if inner else job, "__qualname__", repr(job)))
        return super().submit(fn, *args, **kwargs)


def hold_lease(store, run_id: str, pid: int | None = None, host: str | None = None, beat: float | None = None) -> int:
    """Write ``run_id``'s lease row as a holder would: ``pid`` (default: a process that has ended) on ``host``
    (default: this one), last heartbeat at ``beat`` (default: now); returns the pid."""
    import socket
    import subprocess
    import sys
    import time

    if pid is None:
        ended = subprocess.Popen([sys.executable, "-c", "pass"])
        ended.wait()
        pid = ended.pid
    store.conn.execute("INSERT INTO run_leases VALUES (?, 'someone', ?, ?, ?)",
                       [run_id, host or socket.gethostname(), pid, time.time() if beat is None else beat])  # fmt: skip
    return pid
