"""Q4_1 and Q8_0 layers multiplied as llama.cpp multiplies them: int8 inputs, integer dot products (AVX-512 VNNI).

torch's int4 kernel (``_weight_int4pack_mm_for_cpu``) turns the 4-bit codes back into floats for every 4 rows
of the input, so its time grows with the rows. llama.cpp rounds each input row to int8 per block of 32 and meets
the codes in integer dot products; :file:`int8_dot.c` does that with VPDPBUSD, for Q4_1 layers and (with the
file's own blocks) the Q8_0 output layer: on 2 cores a SmolLM2 decoding step's packed products took 8.4 ms for
8 rows against 16.4 through torch's kernels (``benchmarks/bench_int8_dot.py``). torch ships no such kernel for
CPUs and torchao's are not in its PyPI wheel, so aloekit compiles that file with the system's C compiler
(``$CC``, else ``cc``) on first use, into the cache folder, and loads it with ``ctypes``. Where there is no
compiler, no AVX-512 VNNI, no Linux on x86-64, or the compiled kernel would bring a second OpenMP runtime or
fails its check, :func:`int8_dot_missing` says why and packed weights keep torch's kernels.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from aloekit.cpu_thread import call_on_cpu_thread

SOURCE = Path(__file__).with_name("int8_dot.c")
BLOCK, OUTPUTS_PER_GROUP = 32, 16
"""Inputs per Q4_1 or Q8_0 block; outputs the kernel computes together (a product's outputs come in multiples of
it)."""
FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
UNUSED_S = 30 * 86400
"""A compiled kernel no process has loaded for this long (another source's or compiler's) is removed when the
next one is compiled into its folder."""
OPENMP_RUNTIME = re.compile(r"/lib(?:g|i)?omp[^/]*\.so")
"""A path in ``/proc/self/maps`` of an OpenMP runtime: GNU's (torch's, perhaps renamed by a wheel), Intel's, LLVM's."""
TINIEST_MAXIMUM = np.float32(127) / np.finfo(np.float32).max
"""A block whose largest magnitude is this or less (127 / it would overflow) rounds to zero codes."""
COMPILER_ERROR = re.compile(r"(?:^|: )(?:fatal )?error: ")
"""Where a compiler's line says its error (gcc's and clang's ``file:line:column: error: ...``)."""


def int8_dot_missing() -> str | None:
    """Why this process cannot multiply packed layers with :class:`Int8DotMatmul` (None when it can)."""
    return _library()[1]


@functools.cache
def _library() -> tuple[Any, str | None]:
    """The compiled kernel (None where there is none) and why there is none, found once per process."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"the int8 dot kernel is for Linux on x86-64, not {platform.system()} on {platform.machine()}"
    import torch  # first: the kernel's OpenMP is then torch's own libgomp, already loaded, so one thread team

    compiler = shlex.split(os.environ.get("CC") or "cc")
    runtimes = _openmp_runtimes()
    try:
        library = _compiled(compiler, kernel_name(compiler))
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not compile {SOURCE.name} with {shlex.join(compiler)}: {_compile_error(exc)}"
    except _NotLoaded as exc:
        return None, f"could not load the compiled {SOURCE.name}: {exc}"
    if added := _openmp_runtimes() - runtimes:  # two thread pools would fight over the cores
        names = ", ".join(sorted(Path(path).name for path in added))
        return None, f"the compiled kernel loaded an OpenMP runtime torch does not use ({names})"
    if not library.int8_dot_supported():
        return None, "this CPU lacks AVX-512 VNNI"
    int_, pointer = ctypes.c_int, ctypes.c_void_p
    library.int8_dot_matmul.argtypes = [int_, int_, int_, int_, pointer, pointer, pointer, pointer, pointer, int_]
    library.int8_dot_matmul.restype = int_
    if failed := call_on_cpu_thread(_check, library, torch):
        return None, f"the compiled int8 dot kernel failed its check: {failed}"
    return library, None


def kernel_name(compiler: list[str]) -> str:
    """The compiled kernel's file name: a hash of the source, the compiler and its flags."""
    return f"int8_dot-{hashlib.sha256(SOURCE.read_bytes() + repr([*compiler, *FLAGS]).encode()).hexdigest()[:16]}.so"


class _NotLoaded(Exception):
    """The compiled kernel was there but could not be loaded."""


def _load(path: Path) -> Any:
    """The library at ``path``, loaded (:class:`_NotLoaded` where it cannot be)."""
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise _NotLoaded(str(exc)) from None


def _compiled(compiler: list[str], name: str) -> Any:
    """The kernel compiled by ``compiler`` and loaded: kept in the cache folder under ``name`` (written beside
    its place and renamed, so a concurrent process never loads half a file), or, where that folder cannot be
    written, in a temporary folder removed once loaded."""
    from aloekit.agents.backends.local import cache_dir

    folder = cache_dir() / "kernels"
    if (folder / name).is_file():
        with contextlib.suppress(OSError, _NotLoaded):  # removed since, or unreadable: compiled again below
            library = _load(folder / name)
            with contextlib.suppress(OSError):
                os.utime(folder / name)  # in use: see UNUSED_S
            return library
    try:
        folder.mkdir(parents=True, exist_ok=True)
        place = tempfile.TemporaryDirectory(dir=folder, prefix=".compiling-")
    except OSError:
        place = tempfile.TemporaryDirectory(prefix="aloekit-kernel-")
    with place as scratch:
        built = Path(scratch) / name
        command = [*compiler, *FLAGS, str(SOURCE), "-o", str(built)]
        subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
        if Path(scratch).parent == folder:
            os.replace(built, folder / name)
            built = folder / name
            _remove_unused(folder, name)
        return _load(built)  # a loaded library outlives its file


def _remove_unused(folder: Path, name: str) -> None:
    """Remove the kernels in ``folder`` other than ``name`` that no process has loaded for :data:`UNUSED_S`."""
    for other in folder.glob("int8_dot-*.so"):
        with contextlib.suppress(OSError):  # another process may remove it first
            if other.name != name and time.time() - other.stat().st_mtime > UNUSED_S:
                other.unlink()


def _compile_error(exc: BaseException) -> str:
    """The line that says why the compiler failed: its first error, else how it ended."""
    said = getattr(exc, "stderr", None) or ""
    lines = (said.decode(errors="replace") if isinstance(said, bytes) else said).strip().splitlines()
    if line := next((line for line in lines if COMPILER_ERROR.search(line)), lines[0] if lines else ""):
        return line.strip()
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"no result after {exc.timeout:.0f} s"
    if isinstance(exc, subprocess.CalledProcessError):
        return f"exit status {exc.returncode}"
    return getattr(exc, "strerror", None) or str(exc)


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtime libraries mapped into this process."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return {line.split(maxsplit=5)[-1] for line in maps.splitlines() if OPENMP_RUNTIME.search(line)}


def _check(library: Any, torch: Any) -> str | None:
    """Run the kernel on a fixed random Q4_1 and Q8_0 weight and input: each row must equal
    :func:`reference_matmul` (to bfloat16 rounding) and be the same alone and in every batch of up to 17 rows,
    bit for bit."""
    rng = np.random.default_rng(0)
    scales = rng.uniform(0.001, 0.01, (48, 3)).astype(np.float16).astype(np.float32)
    q4_1 = (rng.integers(0, 16, (48, 96)).astype(np.uint8), scales, (-8 * scales).astype(np.float16).astype(np.float32))
    q8_0 = (rng.integers(-127, 128, (48, 96)).astype(np.int8), scales)
    x = torch.randn(17, 96, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for blocks, matmul in ((q4_1, Int8DotMatmul.q4_1(*q4_1, library)), (q8_0, Int8DotMatmul.q8_0(*q8_0, library))):
        out = matmul(x)
        if not np.allclose(out.float().numpy(), reference_matmul(x.float().numpy(), *blocks), rtol=1e-2, atol=1e-3):
            return "its results are not the reference's"
        if not all(torch.equal(matmul(x[:rows]), out[:rows]) for rows in range(1, 17)):
            return "a row's result depends on its batch"
    return None


def reference_matmul(
    x: np.ndarray, codes: np.ndarray, scales: np.ndarray, minimums: np.ndarray | None = None
) -> np.ndarray:
    """What the kernel computes, in numpy: ``x`` [rows, K] (its values bfloat16's) rounded to int8 codes per
    block of 32 (scale ``max|x| / 127``, round half to even), times ``W = scale * code + minimum`` (Q4_1: codes
    0..15; Q8_0: codes -128..127, no minimum; codes [N, K], scales and minimums [N, K/32]) block by block, float32
    sums (in another order than the kernel's)."""
    rows, k = x.shape
    blocks = x.reshape(rows, k // BLOCK, BLOCK).astype(np.float32)
    most = np.abs(blocks).max(axis=-1)
    inverse = np.divide(np.float32(127), most, out=np.zeros_like(most), where=most > TINIEST_MAXIMUM)
    x_codes = np.rint(blocks * inverse[..., None]).astype(np.int32)
    x_scales = most / np.float32(127)
    w_codes = codes.reshape(codes.shape[0], k // BLOCK, BLOCK).astype(np.int32)
    out = np.einsum("rbk,nbk->rnb", x_codes, w_codes).astype(np.float32) * scales[None] * x_scales[:, None]
    if minimums is not None:
        out += minimums[None] * (x_scales * x_codes.sum(-1))[:, None]
    return out.sum(-1)


class Int8DotMatmul:
    """``x @ W.T`` for a Q4_1 (``bits`` 4) or Q8_0 (``bits`` 8) weight through the compiled kernel: ``x`` bfloat16
    [rows, K], the result bfloat16 [rows, N]. Holds the codes in the kernel's layout (:file:`int8_dot.c`) and the
    float16 scales (and Q4_1's minimums)."""

    kernel = "int8 dot"

    def __init__(self, bits: int, packed: Any, scales: Any, minimums: Any = None, library: Any = None) -> None:
        self.bits, self.packed, self.scales, self.minimums = bits, packed, scales, minimums
        self.outputs, self.inputs = scales.shape[0] * OUTPUTS_PER_GROUP, scales.shape[1] * BLOCK
        self.library = library if library is not None else _library()[0]
        if self.library is None:  # a RuntimeError, as torch's kernels raise: pack_linears leaves the layer float
            raise RuntimeError(f"no int8 dot kernel: {int8_dot_missing()}")
        # a decoding step makes 120 calls: the weights' addresses are looked up once
        self._weights = (packed.data_ptr(), scales.data_ptr(), minimums.data_ptr() if minimums is not None else 0)

    @staticmethod
    def _groups_and_blocks(codes: np.ndarray) -> tuple[int, int]:
        """``codes``' groups of outputs and blocks of inputs; a RuntimeError (as torch's kernels raise for shapes
        they refuse) where outputs are not a multiple of 16 or inputs of 32."""
        n, k = codes.shape
        if n % OUTPUTS_PER_GROUP or k % BLOCK:
            raise RuntimeError(f"the int8 dot kernel wants outputs in multiples of 16 and inputs of 32, not {n}x{k}")
        return n // OUTPUTS_PER_GROUP, k // BLOCK

    @staticmethod
    def _per_group(values: np.ndarray, groups: int, blocks: int) -> Any:
        """Scales or minimums [N, K/32] as float16 [group, block, 16] (the int16 tensor of their bits)."""
        import torch

        grouped = values.astype(np.float16).reshape(groups, OUTPUTS_PER_GROUP, blocks).transpose(0, 2, 1)
        return torch.from_numpy(np.ascontiguousarray(grouped).view(np.int16))

    @classmethod
    def q4_1(cls, codes: np.ndarray, scales: np.ndarray, minimums: np.ndarray, library: Any = None) -> Int8DotMatmul:
        """From a Q4_1 weight's codes [N, K] (0..15), scales and minimums [N, K/32] (float16 values)."""
        import torch

        groups, blocks = cls._groups_and_blocks(codes)
        # [group, lane, block, chunk, nibble, t] -> [group, block, chunk, lane, t, nibble]: input 8 chunk + 4 nibble + t
        split = codes.reshape(groups, OUTPUTS_PER_GROUP, blocks, 4, 2, 4).transpose(0, 2, 3, 1, 5, 4)
        packed = (split[..., 0] | split[..., 1] << 4).astype(np.uint8).reshape(groups, blocks, 256)
        parts = (cls._per_group(values, groups, blocks) for values in (scales, minimums))
        return cls(4, torch.from_numpy(np.ascontiguousarray(packed)), *parts, library)

    @classmethod
    def q8_0(cls, codes: np.ndarray, scales: np.ndarray, library: Any = None) -> Int8DotMatmul:
        """From a Q8_0 weight's codes [N, K] (int8) and scales [N, K/32] (float16 values)."""
        import torch

        groups, blocks = cls._groups_and_blocks(codes)
        # [group, lane, block, chunk, t] -> [group, block, chunk, lane, t]: input 4 chunk + t; unsigned, plus 128
        split = codes.reshape(groups, OUTPUTS_PER_GROUP, blocks, 8, 4).transpose(0, 2, 3, 1, 4)
        packed = (split.astype(np.int16) + 128).astype(np.uint8).reshape(groups, blocks, 512)
        scales_t = cls._per_group(scales, groups, blocks)
        return cls(8, torch.from_numpy(np.ascontiguousarray(packed)), scales_t, None, library)

    def __call__(self, x: Any) -> Any:
        import torch

        if x.dtype != torch.bfloat16 or not x.is_contiguous():
            x = x.to(torch.bfloat16).contiguous()
        rows, k = x.shape
        if k != self.inputs:
            raise RuntimeError(f"the input has {k} features, the weight {self.inputs}")
        out = torch.empty(rows, self.outputs, dtype=torch.bfloat16)
        pointers = (x.data_ptr(), *self._weights, out.data_ptr())
        if rows and self.library.int8_dot_matmul(self.bits, rows, k, self.outputs, *pointers, torch.get_num_threads()):
            raise MemoryError("the int8 dot kernel could not allocate its input codes")
        return out

    @classmethod
    def joined(cls, parts: list[Int8DotMatmul]) -> Int8DotMatmul | None:
        """One product for several weights that multiply the same input, its outputs theirs side by side, bit
        for bit (each output is computed alone); None where their inputs or codes differ in kind."""
        import torch

        if len({(p.inputs, p.bits) for p in parts}) != 1:
            return None
        minimums = torch.cat([p.minimums for p in parts]) if parts[0].minimums is not None else None
        packed, scales = (torch.cat([getattr(p, field) for p in parts]) for field in ("packed", "scales"))
        return cls(parts[0].bits, packed, scales, minimums, parts[0].library)
