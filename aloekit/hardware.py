"""Defaults chosen from the hardware: how many requests an in-process model gets at once on a GPU, recorded
in the run config so a run says what it ran on and with which limits."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from aloekit.agents.backends.pool import BackendPool
from aloekit.agents.backends.registry import get_backend, parse_spec
from aloekit.config import AloeConfig

GIB = 1024**3
GIB_PER_REQUEST = 0.25
"""Free GPU memory allowed per in-flight request: the KV cache of a 2,048-token chat of a model up to about 3B
parameters with grouped-query attention (transformers sizes the real cache itself, from free memory)."""
MIN_IN_FLIGHT, MAX_IN_FLIGHT = 16, 256
CALLS_PER_CONVERSATION = 4
"""Model calls one simulated turn issues at once (inducer, two responders, judge): conversations in flight are
the request limit divided by this."""


@dataclass(frozen=True)
class Hardware:
    """What the in-process models run on."""

    device: str
    """``cuda`` or ``cpu``."""
    name: str
    free_memory_gib: float | None
    """Free GPU memory when detected (None on CPU)."""
    dtype: str
    """What in-process models load as by default: bfloat16 on CUDA and AMX CPUs, else float32 (``dtype`` setting)."""
    in_flight: int | None
    """Requests an in-process model gets at once by default (None: the configured defaults stand)."""

    @property
    def conversations(self) -> int | None:
        """Conversations in flight by default when every call goes to in-process models."""
        return None if self.in_flight is None else max(1, self.in_flight // CALLS_PER_CONVERSATION)

    def record(self) -> dict[str, Any]:
        """The run config's ``hardware`` entry."""
        return asdict(self)


@functools.cache
def detect() -> Hardware:
    """The first CUDA device if there is one, else the CPU (detected once per process)."""
    import torch

    from aloekit.agents.backends.local import resolve_dtype

    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        free_gib = free / GIB
        in_flight = min(MAX_IN_FLIGHT, max(MIN_IN_FLIGHT, int(free_gib / GIB_PER_REQUEST)))
        name = torch.cuda.get_device_name(0)
        return Hardware("cuda", name, round(free_gib, 1), resolve_dtype("auto", "cuda"), in_flight)
    return Hardware("cpu", f"cpu ({os.cpu_count()} cores)", None, resolve_dtype("auto", "cpu"), None)


def in_process(specs: Iterable[str]) -> list[str]:
    """The specs among ``specs`` that run in this process (``local:``, ``hf:``...)."""
    return [spec for spec in specs if get_backend(parse_spec(spec).prefix).batching]


def apply_backend_defaults(config: AloeConfig, specs: Iterable[str], hardware: Hardware) -> AloeConfig:
    """``config`` with each in-process spec's ``max_concurrency`` and ``max_batch_size`` raised to the
    hardware's default where neither ``[backend]`` nor ``[backends."SPEC"]`` sets them."""
    if hardware.in_flight is None:
        return config
    backends = dict(config.backends)
    for spec in in_process(specs):
        text = parse_spec(spec).text
        own = dict(backends.get(text, {}))
        for key in ("max_concurrency", "max_batch_size"):
            if key not in config.backend.model_fields_set and key not in own:
                own[key] = hardware.in_flight
        backends[text] = own
    return config.model_copy(update={"backends": backends})


HARDWARE_ENTRIES = {
    "engine": "engines",
    "dtype": "dtypes",
    "weights": "weights",
    "q4_1_matmul": "q4_1_matmuls",
    "q8_0_matmul": "q8_0_matmuls",
}
"""An in-process model's compute setting -> the run config's ``hardware`` entry that records it per spec."""


def recorded_files(run_config: dict[str, Any]) -> dict[str, str]:
    """Which files each in-process spec of a run answered with (its ``hardware.files``; {} when none)."""
    hardware = run_config.get("hardware")
    files = hardware.get("files") if isinstance(hardware, dict) else None
    return {spec: value for spec, value in files.items() if isinstance(value, str)} if isinstance(files, dict) else {}


def run_defaults(
    config: AloeConfig, specs: Iterable[str], concurrency: int, concurrency_given: bool
) -> tuple[AloeConfig, int, dict[str, Any] | None]:
    """For a run whose roles use ``specs``: the config with in-process backends sized to the hardware, the
    conversations to keep in flight (the hardware's default where nothing set them and every role runs in this
    process), and the ``hardware`` record for the run config (None when no role runs in this process), with
    the engine, dtype and weights each in-process spec will use, how packed weights will multiply their Q4_1
    and Q8_0 layers, and which files it answers with (``files``: ``TransformersChatClient.weights_identity``)."""
    from aloekit.agents.backends.local import resolve_compute

    specs = list(specs)
    local = in_process(specs)
    if not local:
        return config, concurrency, None
    hardware = detect()
    config = apply_backend_defaults(config, local, hardware)
    if not concurrency_given and hardware.conversations is not None and len(local) == len(specs):
        concurrency = hardware.conversations
    settings = {spec: config.backend_settings(spec) for spec in local}
    computed = {spec: resolve_compute(s.engine, s.dtype, s.weights, hardware.device,
                                      gguf=parse_spec(spec).prefix == "local", quiet=True)
                for spec, s in settings.items()}  # fmt: skip
    entries = {name: {spec: c[setting] for spec, c in computed.items() if setting in c}
               for setting, name in HARDWARE_ENTRIES.items()}  # fmt: skip
    files = BackendPool(config).files(local)
    record = {**hardware.record(), "conversations": concurrency, **entries, "files": files}
    return config, concurrency, record
