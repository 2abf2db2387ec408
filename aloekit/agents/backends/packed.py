"""Decode with a GGUF's own quantized blocks on a CPU, as llama.cpp does.

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth: the float32 weights
that ``local:`` models are converted to are 540 MB a step for SmolLM2-135M, its GGUF's blocks 94 MB. Where this
process has the compiled int8 dot kernel (:mod:`~aloekit.agents.backends.int8_dot`), each linear layer stored as
Q4_1 (32 weights sharing a float16 scale and minimum) or Q8_0 (32 signed bytes sharing a scale) multiplies as
llama.cpp multiplies it: its input rows rounded to int8 per block, integer dot products with exactly the file's
codes. Elsewhere a Q4_1 layer runs through torch's grouped int4 kernel with exactly those codes (scales and
minimums rounded to bfloat16); the Q8_0 output layer through torch's int8 kernel, its codes rounded again to
one scale per row (that kernel has no groups); or, for a bfloat16 model on a CPU with AMX tiles, through oneDNN
with its own bfloat16 weight reordered for the tiles: it reads twice the bytes, so it is slower for one row, but
the int8 kernel's time grows with the rows. Those multiply in bfloat16. Only one-token-per-row inputs take them:
decoding steps, and the output layer on a prompt's last position (``logits_to_keep=1``: a reply's first token, a
guided choice); the rest of a prompt keeps the float weights, where float BLAS is faster, and a reply
decodes alike whatever batch it is in. The blocks are matched to the layers once, bit for bit against the
float weights, and cached.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aloekit.agents.backends.int8_dot import Int8DotMatmul
from aloekit.cpu_thread import call_on_cpu_thread

logger = logging.getLogger(__name__)

GROUP = 32
"""Weights per GGUF block (Q4_1 and Q8_0): torch's int4 kernel groups them the same way."""
Q4_1_BYTES, Q8_0_BYTES = 20, 34
CACHE_NAME = "packed-blocks-2.safetensors"
"""The file of matched blocks beside a converted model; ``-2``: with each Q8_0 layer's own blocks too (the int8
dot kernel takes them), so a cache written before, without them, is matched again and then removed."""
OLD_CACHE_NAMES = ("packed-blocks.safetensors",)


class PackedMatmul(Protocol):
    """``x @ W.T`` for one packed weight ``W``: ``x`` bfloat16 [rows, K], the result bfloat16 [rows, N]."""

    kernel: str
    """What the compute settings call it: ``int8 dot``, ``int4``, ``bfloat16 tiles`` or ``int8``."""

    def __call__(self, x: Any) -> Any: ...


@functools.cache
def packed_kernels_missing() -> str | None:
    """Why this torch cannot run packed weights (None when it can): its CPU int4 and int8 kernels are absent
    or fail on a tiny input. Probed once per process, on the CPU thread (:mod:`aloekit.cpu_thread`)."""
    return call_on_cpu_thread(_probe_packed_kernels)


def _probe_packed_kernels() -> str | None:
    """:func:`packed_kernels_missing`, probed in the calling thread."""
    import torch

    ops = ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu", "_weight_int8pack_mm")
    if missing := [op for op in ops if not hasattr(torch.ops.aten, op)]:
        return f"torch {torch.__version__} lacks {', '.join(missing)}"
    rows, x = 16, torch.ones(1, GROUP, dtype=torch.bfloat16)  # the int4 kernel wants rows in multiples of 16
    try:
        ones = np.ones((rows, 1), np.float32)
        _q4_matmul(np.zeros((rows, GROUP), np.uint8), ones, ones)(x)
        Q8Matmul.from_codes(np.ones((rows, GROUP), np.int8), np.ones(rows, np.float32))(x)
    except (RuntimeError, NotImplementedError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"torch's CPU int4/int8 kernels failed: {detail}"
    return None


def _q4_matmul(codes: np.ndarray, scales: np.ndarray, minimums: np.ndarray) -> Q4Matmul:
    """``x @ W.T`` for ``W = scale * code + minimum`` per group of 32: codes [N, K] in 0..15, scales and
    minimums [N, K/32]. torch's kernel computes ``(code - 8) * scale + zero``: zero is ``minimum + 8 * scale``."""
    import torch

    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.from_numpy(codes.astype(np.int32)), 1)
    scale_zero = np.stack([scales, minimums + 8 * scales], axis=-1).transpose(1, 0, 2)  # [K/32, N, 2]
    return Q4Matmul(packed, torch.from_numpy(np.ascontiguousarray(scale_zero)).to(torch.bfloat16))


def _probe_input(rows: int, columns: int) -> Any:
    """A fixed random bfloat16 input [rows, columns] on which a kernel is checked against its reference."""
    import torch

    return torch.randn(rows, columns, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)


def in_bfloat16(matmul: Callable[[Any], Any], x: Any) -> Any:
    """``matmul(x)`` for a packed matmul, which multiplies in bfloat16: ``x`` cast to it, the result back to
    ``x``'s dtype (what a packed layer returns, through its forward or the plain decoding step)."""
    import torch

    if x.dtype == torch.bfloat16:  # a bfloat16 model's: no casts (each costs a call; a step makes 240 here)
        return matmul(x)
    return matmul(x.to(torch.bfloat16)).to(x.dtype)


class Q4Matmul:
    """torch's int4 kernel over one packed weight ([N, K/2] codes, [K/32, N, 2] bfloat16 scales and zeros)."""

    kernel = "int4"

    def __init__(self, packed: Any, scale_zero: Any) -> None:
        self.packed, self.scale_zero = packed, scale_zero

    def __call__(self, x: Any) -> Any:
        import torch

        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scale_zero)

    @classmethod
    def joined(cls, parts: list[Q4Matmul]) -> Q4Matmul | None:
        """One kernel for several weights that multiply the same input, its output their outputs side by side,
        each column bit for bit (the kernel reduces each output column alone); None where the packed layout
        does not allow it. torch packs rows in blocks (64 on AVX-512), so only parts whose rows fill whole
        blocks join: the joined kernel is checked against the parts on a probe input."""
        import torch

        joined = cls(torch.cat([p.packed for p in parts]), torch.cat([p.scale_zero for p in parts], dim=1))
        probe = _probe_input(2, parts[0].scale_zero.shape[0] * GROUP)
        return joined if torch.equal(joined(probe), torch.cat([p(probe) for p in parts], dim=-1)) else None


def joined_product(matmuls: list[Any]) -> Any | None:
    """One product for packed matmuls that multiply the same input, their outputs side by side: where all are of
    one kind that joins (torch's int4 kernel, the int8 dot kernel) and it can join them; else None."""
    kinds = {type(matmul) for matmul in matmuls}
    if len(kinds) == 1 and (kind := kinds.pop()) in (Q4Matmul, Int8DotMatmul):
        return kind.joined(matmuls)
    return None


class Q8Matmul:
    """torch's int8 kernel over one weight ``W = row_scale * code``: codes int8 [N, K], row scales bfloat16 [N]."""

    kernel = "int8"

    def __init__(self, codes: Any, row_scales: Any) -> None:
        self.codes, self.row_scales = codes, row_scales

    @classmethod
    def from_codes(cls, codes: np.ndarray, row_scales: np.ndarray) -> Q8Matmul:
        """From numpy codes [N, K] and float32 row scales [N]."""
        import torch

        return cls(torch.from_numpy(codes), torch.from_numpy(row_scales).to(torch.bfloat16))

    def __call__(self, x: Any) -> Any:
        import torch

        return torch.ops.aten._weight_int8pack_mm(x, self.codes, self.row_scales)


TILES_ROWS, TILES_MIN_INPUTS = 32, 64
"""Rows per oneDNN call of :func:`bfloat16_tiles_matmul`, and the fewest inputs it takes: above 32 rows, and
for one row of fewer than 64 inputs, oneDNN changes kernel (measured), so a row's result would depend on how
many rows share its batch."""


class BFloat16TilesMatmul:
    """``x @ W.T`` for a bfloat16 ``W`` reordered once for the CPU's matrix units, :data:`TILES_ROWS` rows per
    oneDNN call (:func:`bfloat16_tiles_matmul` makes and checks one)."""

    kernel = "bfloat16 tiles"

    def __init__(self, reordered: Any) -> None:
        self.reordered = reordered

    def __call__(self, x: Any) -> Any:
        import torch

        linear = torch.ops.mkldnn._linear_pointwise
        out = [linear(part, self.reordered, None, "none", [], "") for part in x.split(TILES_ROWS)]
        return out[0] if len(out) == 1 else torch.cat(out)


def bfloat16_tiles_matmul(weight: Any) -> BFloat16TilesMatmul | None:
    """``x @ W.T`` for ``W = weight`` in bfloat16, through oneDNN with ``W`` reordered once for the CPU's matrix
    units (``torch.nn.functional.linear`` reorders it at every call), :data:`TILES_ROWS` rows per call; None
    for a weight of fewer than :data:`TILES_MIN_INPUTS` inputs, where this torch has no such path, or where a
    probe finds its result not ``linear``'s (for up to 32 rows) or a row's result not the same alone and in
    any batch, bit for bit."""
    import torch

    mkldnn = torch.ops.mkldnn
    if not (hasattr(mkldnn, "_reorder_linear_weight") and hasattr(mkldnn, "_linear_pointwise")):
        return None
    if weight.shape[1] < TILES_MIN_INPUTS:
        return None
    weight = weight.detach().to(torch.bfloat16)
    try:
        matmul = BFloat16TilesMatmul(mkldnn._reorder_linear_weight(weight))
        probe = _probe_input(TILES_ROWS + 2, weight.shape[1])
        out = matmul(probe)
        linear = torch.nn.functional.linear(probe[:TILES_ROWS, None], weight)[:, 0]
        same = torch.equal(out[:TILES_ROWS], linear)
        same = same and all(torch.equal(matmul(probe[:rows]), out[:rows]) for rows in range(1, len(probe)))
    except (RuntimeError, NotImplementedError):  # a torch built without oneDNN, or a weight it refuses
        return None
    return matmul if same else None


def per_row_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` [N, K] rounded to int8 codes with one float32 scale per row (what torch's int8 kernel takes)."""
    row_scales = (np.maximum(np.abs(weight).max(axis=1), np.finfo(np.float32).tiny) / 127).astype(np.float32)
    return np.rint(weight / row_scales[:, None]).astype(np.int8), row_scales


def _q4_1_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 bytes [N, K/32 * 20] as (codes [N, K], scales [N, K/32], minimums [N, K/32])."""
    blocks = raw.reshape(raw.shape[0], -1, Q4_1_BYTES)
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    minimums = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    nibbles = blocks[..., 4:]  # byte j holds weight j (low nibble) and weight j + 16 (high nibble)
    codes = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).reshape(raw.shape[0], -1)
    return codes, scales, minimums


def _q8_0_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 bytes [N, K/32 * 34] as (codes int8 [N, K], scales float32 [N, K/32])."""
    blocks = raw.reshape(raw.shape[0], -1, Q8_0_BYTES)
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    return blocks[..., 2:].copy().view(np.int8).reshape(raw.shape[0], -1), scales


def _dequantized(kind: str, raw: np.ndarray) -> np.ndarray:
    """A Q4_1 or Q8_0 tensor as float32 [N, K], computed as transformers' GGUF loader (gguf-py) does, so that
    equal weights compare equal bit for bit."""
    if kind == "Q8_0":
        codes, scales = _q8_0_blocks(raw)
        blocks = codes.reshape(raw.shape[0], -1, GROUP).astype(np.float32) * scales[..., None]
        return blocks.reshape(raw.shape[0], -1)
    codes, scales, minimums = _q4_1_blocks(raw)
    return np.repeat(scales, GROUP, axis=1) * codes.astype(np.float32) + np.repeat(minimums, GROUP, axis=1)


def _row_order(dequantized: np.ndarray, weight: np.ndarray) -> np.ndarray | None:
    """Indices ``order`` with ``dequantized[order] == weight`` bit for bit (a GGUF stores some layers' rows
    permuted: llama.cpp's rotary order of q and k), or None when they are not the same weights."""
    if dequantized.shape != weight.shape:
        return None
    where = {row.tobytes(): i for i, row in enumerate(dequantized)}
    order = [where.get(row.tobytes(), -1) for row in weight]
    return None if -1 in order else np.asarray(order)


def match_gguf_blocks(model: Any, gguf: Path) -> dict[str, np.ndarray]:
    """For each linear layer of ``model`` whose float weight is exactly a Q4_1 or Q8_0 tensor of ``gguf``, the
    arrays its packed kernels need, in the layer's row order, keyed ``LAYER.codes/scales/minimums`` (Q4_1) or
    ``LAYER.q8_0_codes/q8_0_scales`` (Q8_0's blocks) and ``LAYER.int8/row_scales`` (their codes rounded again
    to one scale per row, for torch's int8 kernel). A layer matching no tensor is left out (it stays float)."""
    import torch
    from gguf import GGUFReader

    tensors = [(t.tensor_type.name, t.data) for t in GGUFReader(gguf).tensors
               if t.tensor_type.name in ("Q4_1", "Q8_0") and len(t.data.shape) == 2]  # fmt: skip
    by_row: dict[int, int] = {}  # hash of any dequantized row -> its tensor: each layer's found in one look
    for index, (kind, raw) in enumerate(tensors):
        for row in _dequantized(kind, raw):
            by_row.setdefault(hash(row.tobytes()), index)
    arrays: dict[str, np.ndarray] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module.bias is not None:
            continue
        weight = module.weight.detach().cpu().numpy()
        if (index := by_row.get(hash(weight[0].tobytes()))) is None:
            continue
        kind, raw = tensors[index]
        if (order := _row_order(_dequantized(kind, raw), weight)) is None:
            continue
        if kind == "Q4_1":
            codes, scales, minimums = _q4_1_blocks(raw)
            arrays |= {f"{name}.codes": codes[order], f"{name}.scales": scales[order],
                       f"{name}.minimums": minimums[order]}  # fmt: skip
        else:
            codes, scales = _q8_0_blocks(raw)
            row_codes, row_scales = per_row_int8(weight)
            arrays |= {f"{name}.q8_0_codes": codes[order], f"{name}.q8_0_scales": scales[order],
                       f"{name}.int8": row_codes, f"{name}.row_scales": row_scales}  # fmt: skip
    return arrays


def blocks_cached(folder: Path) -> bool:
    """Whether :func:`cached_gguf_blocks` has saved its blocks in ``folder`` (then it needs no float32 weights)."""
    return (folder / CACHE_NAME).is_file()


def cached_gguf_blocks(model: Any, gguf: Path, folder: Path) -> dict[str, np.ndarray]:
    """:func:`match_gguf_blocks`, saved in ``folder`` (the converted model's) the first time: reading the GGUF's
    metadata alone takes seconds. Written beside its place and renamed, as the converted model is."""
    from safetensors.numpy import load_file, save_file

    path = folder / CACHE_NAME
    if blocks_cached(folder):
        return load_file(path)
    arrays = match_gguf_blocks(model, gguf)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".packed-", dir=folder)
        os.close(fd)
        try:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        for old in OLD_CACHE_NAMES:  # superseded: it would only take room
            (folder / old).unlink(missing_ok=True)
    except OSError as exc:  # a read-only or full cache: the blocks still serve this load
        logger.warning("could not cache the packed blocks in %s: %s", folder, exc)
    return arrays


def pack_linears(
    model: Any, arrays: dict[str, np.ndarray], skip: tuple[str, ...] = (), tiles: bool = False, int8_dot: bool = False
) -> int:
    """Send the decoding steps of each layer named in ``arrays`` through its packed kernel
    (:func:`layer_matmul`); returns how many. A layer no kernel takes stays float, as does one named in ``skip``
    or ending in ``.NAME`` for a NAME there (an adapter's ``modules_to_save``: peft trains a copy of those, whose
    weights the packed blocks are not)."""
    packed = 0
    for name, module in model.named_modules():
        if any(name == kept or name.endswith(f".{kept}") for kept in skip):
            continue
        if (matmul := layer_matmul(name, module, arrays, tiles, int8_dot)) is not None:
            module.__class__, module.packed_matmul = _packed_class(), matmul
            packed += 1
    return packed


def layer_matmul(
    name: str, module: Any, arrays: dict[str, np.ndarray], tiles: bool = False, int8_dot: bool = False
) -> PackedMatmul | None:
    """The kernel layer ``name`` decodes with: the first of its kernels that takes its shape and gives its
    outputs, None where it has no blocks in ``arrays`` or every kernel refuses it (the int4 one wants outputs in
    multiples of 16; a cache left by another model holds other shapes). A Q4_1 layer: the int8 dot kernel
    (where ``int8_dot``: :func:`~aloekit.agents.backends.int8_dot.int8_dot_missing` is None), else torch's int4
    kernel. A Q8_0 layer: the int8 dot kernel on its own blocks (where ``int8_dot`` and they are in
    ``arrays``); with ``tiles`` (a bfloat16 model on a CPU with AMX tiles), its own weight in bfloat16 reordered
    for the tiles (:func:`bfloat16_tiles_matmul`), as the int8 kernel's time grows with the rows (SmolLM2's
    output layer: 1.44 against 1.04 ms for one row, 1.51 against 3.55 for 8; a whole decoding step within 2%
    for one row, 10-14% faster for 8); else torch's int8 kernel."""
    import torch

    kernels: list[tuple[str, Callable[[], PackedMatmul | None]]] = []
    if f"{name}.codes" in arrays:
        q4_1 = arrays[f"{name}.codes"], arrays[f"{name}.scales"], arrays[f"{name}.minimums"]
        if int8_dot:
            kernels.append(("the int8 dot kernel", lambda: Int8DotMatmul.q4_1(*q4_1)))
        kernels.append(("the int4 kernel", lambda: _q4_matmul(*q4_1)))
    elif f"{name}.int8" in arrays:
        if int8_dot and f"{name}.q8_0_codes" in arrays:
            q8_0 = arrays[f"{name}.q8_0_codes"], arrays[f"{name}.q8_0_scales"]
            kernels.append(("the int8 dot kernel", lambda: Int8DotMatmul.q8_0(*q8_0)))
        if tiles:
            kernels.append(("the bfloat16 tiles", lambda: bfloat16_tiles_matmul(module.weight)))
        kernels.append(("the int8 kernel", lambda: Q8Matmul.from_codes(arrays[f"{name}.int8"],
                                                                         arrays[f"{name}.row_scales"])))  # fmt: skip
    for kernel, make in kernels:
        try:
            if (matmul := make()) is None:
                raise RuntimeError("no oneDNN bfloat16 path equal to linear")
            out = matmul(torch.zeros(1, module.in_features, dtype=torch.bfloat16))
            if out.shape[-1] != module.out_features:
                raise RuntimeError(f"{out.shape[-1]} outputs, not {module.out_features}")
            return matmul
        except RuntimeError as exc:
            logger.info("%s: not %s: %s", name, kernel, str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
    if kernels:
        logger.info("%s stays float: no packed kernel takes it", name)
    return None


def kernels_taken(model: Any, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Which kernels ``model``'s packed layers took, as the compute settings name them: ``q4_1_matmul`` for the
    layers with Q4_1 blocks in ``arrays``, ``q8_0_matmul`` for those with Q8_0 ones (several joined by `` + ``;
    a kind with no packed layer is left out)."""
    taken: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        if (matmul := getattr(module, "packed_matmul", None)) is None:
            continue
        kind = "q4_1_matmul" if f"{name}.codes" in arrays else "q8_0_matmul" if f"{name}.int8" in arrays else None
        if kind:
            taken.setdefault(kind, set()).add(matmul.kernel)
    return {kind: " + ".join(sorted(names)) for kind, names in taken.items()}


@functools.cache
def _packed_class() -> type:
    """:class:`PackedLinear`, defined on first use (torch is imported lazily: the CLI starts without it)."""
    import torch

    class PackedLinear(torch.nn.Linear):
        """A linear layer whose decoding-step inputs ([batch, 1, features]) go through ``packed_matmul`` (in
        bfloat16, back in their dtype), any other through its float weight. It stays a ``torch.nn.Linear``
        with its weight, so a peft adapter wraps it as any other and adds its float update."""

        packed_matmul: Callable[[Any], Any]

        def forward(self, x: Any) -> Any:
            if x.dim() != 3 or x.shape[1] != 1:
                return super().forward(x)
            return in_bfloat16(self.packed_matmul, x[:, 0])[:, None]

    return PackedLinear
