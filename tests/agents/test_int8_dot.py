"""The compiled int8 dot kernel for Q4_1 and Q8_0 layers: what it computes, a row the same alone and in any batch,
joined products, the shapes it refuses, its compiled file cached, and torch's kernels wherever it cannot run."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from aloekit.agents.backends import int8_dot, local, packed
from aloekit.agents.backends.int8_dot import Int8DotMatmul, int8_dot_missing, reference_matmul

needs_dot = pytest.mark.skipif(int8_dot_missing() is not None, reason=f"no int8 dot kernel: {int8_dot_missing()}")
Q4_1, Q8_0 = GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0
KINDS = ["Q4_1", "Q8_0"]


def _blocks(rows: int = 48, columns: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random weight quantized to Q4_1: its codes, scales and minimums, and the weight they decode to."""
    raw = quantize(np.random.default_rng(seed).normal(size=(rows, columns)).astype(np.float32), Q4_1)
    return (*packed._q4_1_blocks(raw), dequantize(raw, Q4_1))


def _weight(kind: str, rows: int = 48, columns: int = 96, seed: int = 0) -> tuple[Int8DotMatmul, tuple, np.ndarray]:
    """A random weight quantized to ``kind``: the kernel's product by it, its blocks as :func:`reference_matmul`
    takes them, and the float weight they decode to."""
    if kind == "Q4_1":
        *blocks, weight = _blocks(rows, columns, seed)
        return Int8DotMatmul.q4_1(*blocks), tuple(blocks), weight
    raw = quantize(np.random.default_rng(seed).normal(size=(rows, columns)).astype(np.float32), Q8_0)
    blocks = packed._q8_0_blocks(raw)
    return Int8DotMatmul.q8_0(*blocks), blocks, dequantize(raw, Q8_0)


def _input(rows: int, columns: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed)).bfloat16()


@pytest.fixture
def fresh_library(monkeypatch):
    """The kernel found again in this test (its settings patched), and again after it: nothing found under a
    patched setting outlives the test."""
    int8_dot._library.cache_clear()
    yield
    monkeypatch.undo()
    int8_dot._library.cache_clear()


@needs_dot
@pytest.mark.parametrize("kind", KINDS)
def test_the_kernel_computes_its_reference_and_is_close_to_the_float_weights(kind):
    matmul, blocks, weight = _weight(kind)
    x = _input(13, 96)
    out = matmul(x)
    assert out.dtype == torch.bfloat16 and out.shape == (13, 48)
    expected = reference_matmul(x.float().numpy(), *blocks)
    # float32 sums in another order, then the result rounded to bfloat16 (8 bits): within a few of its steps
    assert np.allclose(out.float().numpy(), expected, rtol=2**-7, atol=1e-3)
    exact = x.float() @ torch.from_numpy(weight).T
    assert float((out.float() - exact).norm() / exact.norm()) < 0.02  # int8 inputs: llama.cpp's error


@needs_dot
def test_reference_rounds_each_block_of_inputs_to_int8():
    codes = np.ones((16, 64), np.uint8)
    scales, minimums = np.ones((16, 2), np.float32), np.zeros((16, 2), np.float32)
    x = np.concatenate([np.full(32, 0.5), np.linspace(-2, 2, 32)])[None].astype(np.float32)
    # the first block is 127 codes of 0.5 / 127 each; the second rounds to codes symmetric about zero
    assert np.allclose(reference_matmul(x, codes, scales, minimums), 16.0)
    out = Int8DotMatmul.q4_1(codes, scales, minimums)(torch.from_numpy(x).bfloat16())
    assert torch.allclose(out.float(), torch.full((1, 16), 16.0))
    # Q8_0's extreme codes, whose 128 offset the kernel takes off again: -128..127 against -127..127 inputs
    extremes = np.tile(np.array([-128, 127, -1, 0], np.int8), (16, 16))
    x = np.tile(np.array([127, -127, 5, 9], np.float32), 16)[None]
    out = Int8DotMatmul.q8_0(extremes, np.ones((16, 2), np.float32))(torch.from_numpy(x).bfloat16())
    exact = torch.full((1, 16), 16.0 * (-128 * 127 - 127 * 127 - 5))  # 16 times 4 inputs: the integers exactly
    assert torch.equal(out, exact.bfloat16())


@needs_dot
@pytest.mark.parametrize("kind", KINDS)
def test_a_row_is_the_same_alone_and_in_any_batch(kind):
    matmul, x = _weight(kind, 64, 128)[0], _input(21, 128)
    whole = matmul(x)
    for row in range(len(x)):
        assert torch.equal(matmul(x[row : row + 1]), whole[row : row + 1])
    for rows in range(1, len(x)):  # 8 rows are multiplied together: partial and several groups of them
        assert torch.equal(matmul(x[:rows]), whole[:rows])
    assert torch.equal(matmul(x[:, :].t().contiguous().t()), whole)  # a strided input is read as its values
    assert matmul(x[:0]).shape == (0, 64)


@needs_dot
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_nan_or_infinite_input_makes_its_row_nan_and_no_other(kind, value):
    """A float product carries a NaN or an infinity through; rounding to int8 must not turn it into a number."""
    matmul, x = _weight(kind, 32, 64)[0], _input(3, 64)
    poisoned = x.clone()
    poisoned[1, 40] = value
    out = matmul(poisoned)
    assert out[1].isnan().all() and torch.equal(out[[0, 2]], matmul(x)[[0, 2]])


@needs_dot
@pytest.mark.parametrize("kind", KINDS)
def test_a_block_of_tiny_inputs_gives_tiny_results_not_overflowed_codes(kind):
    """127 / max|x| overflows for subnormal inputs; the kernel and its reference round such a block to zeros."""
    matmul, blocks, _ = _weight(kind, 32, 64)
    x = _input(2, 64)
    x[0], x[0, :32] = 0, 1e-38  # a subnormal float32; bfloat16 has its exponent range
    out = matmul(x)
    assert torch.equal(out[0], torch.zeros(32, dtype=torch.bfloat16)) and torch.equal(out[1], matmul(x[1:])[0])
    assert np.allclose(out.float().numpy(), reference_matmul(x.float().numpy(), *blocks), rtol=1e-2, atol=1e-3)


@needs_dot
@pytest.mark.parametrize("kind", KINDS)
def test_a_joined_product_equals_its_parts_bit_for_bit(kind):
    parts = [_weight(kind, n, 64, seed=n)[0] for n in (64, 16, 32)]
    joined, x = Int8DotMatmul.joined(parts), _input(5, 64)
    assert torch.equal(joined(x), torch.cat([part(x) for part in parts], dim=-1))
    assert Int8DotMatmul.joined([parts[0], _weight(kind, 16, 96)[0]]) is None  # other inputs
    other = "Q8_0" if kind == "Q4_1" else "Q4_1"
    assert Int8DotMatmul.joined([parts[0], _weight(other, 16, 64)[0]]) is None  # other codes


@needs_dot
def test_shapes_the_kernel_refuses_leave_a_layer_float():
    with pytest.raises(RuntimeError, match="multiples of 16"):
        Int8DotMatmul.q4_1(*_blocks(8, 32)[:3])
    with pytest.raises(RuntimeError, match="multiples of 16 and inputs of 32, not 16x48"):
        Int8DotMatmul.q8_0(np.zeros((16, 48), np.int8), np.ones((16, 1), np.float32))
    matmul = Int8DotMatmul.q4_1(*_blocks(16, 64)[:3])
    with pytest.raises(RuntimeError, match="the input has 32 features, the weight 64"):
        matmul(_input(2, 32))
    codes, scales, minimums, _ = _blocks(8, 32)
    net = torch.nn.Sequential(torch.nn.Linear(32, 8, bias=False))
    arrays = {"0.codes": codes, "0.scales": scales, "0.minimums": minimums}
    assert packed.pack_linears(net, arrays, int8_dot=True) == 0


@needs_dot
@pytest.mark.parametrize(("tiles", "taken"), [(None, "int8"), ("refused", "int8"), ("taken", "bfloat16 tiles")])
def test_a_q8_0_layer_the_kernel_refuses_takes_the_next_kernel(monkeypatch, tiles, taken):
    """24 outputs are no multiple of 16: the int8 dot kernel refuses the layer, the AMX tiles take it where asked
    for and their probe accepts them, else torch's int8 kernel; the settings say which."""

    class Tiles:
        kernel = "bfloat16 tiles"

        def __call__(self, x):
            return torch.zeros(len(x), 24, dtype=torch.bfloat16)

    monkeypatch.setattr(packed, "bfloat16_tiles_matmul", lambda weight: Tiles() if tiles == "taken" else None)
    weight = np.random.default_rng(0).normal(size=(24, 64)).astype(np.float32)
    raw = quantize(weight, Q8_0)
    q8_0_codes, q8_0_scales = packed._q8_0_blocks(raw)
    row_codes, row_scales = packed.per_row_int8(dequantize(raw, Q8_0))
    net = torch.nn.Sequential(torch.nn.Linear(64, 24, bias=False))
    arrays = {"0.q8_0_codes": q8_0_codes, "0.q8_0_scales": q8_0_scales, "0.int8": row_codes, "0.row_scales": row_scales}
    assert packed.pack_linears(net, arrays, tiles=tiles is not None, int8_dot=True) == 1
    assert net[0].packed_matmul.kernel == taken
    assert packed.kernels_taken(net, arrays) == {"q8_0_matmul": taken}


def test_without_the_kernel_a_layer_asked_for_it_stays_float(monkeypatch, tmp_path, fresh_library):
    monkeypatch.setenv(local.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CC", "false")
    codes, scales, minimums, _ = _blocks(16, 32)
    with pytest.raises(RuntimeError, match="no int8 dot kernel: could not compile"):
        Int8DotMatmul.q4_1(codes, scales, minimums)
    net = torch.nn.Sequential(torch.nn.Linear(32, 16, bias=False))
    arrays = {"0.codes": codes, "0.scales": scales, "0.minimums": minimums}
    assert packed.pack_linears(net, arrays, int8_dot=True) == 1  # torch's int4 kernel instead
    assert packed.kernels_taken(net, arrays) == {"q4_1_matmul": "int4"}


@needs_dot
def test_pack_linears_takes_the_kernel_when_asked():
    codes, scales, minimums, weight = _blocks(32, 64)
    arrays = {"0.codes": codes, "0.scales": scales, "0.minimums": minimums}
    nets = []
    for dot in (False, True):
        net = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False))
        net[0].weight.data = torch.from_numpy(weight)
        assert packed.pack_linears(net, arrays, int8_dot=dot) == 1
        assert isinstance(net[0].packed_matmul, Int8DotMatmul if dot else packed.Q4Matmul)
        nets.append(net)
    step = _input(3, 64).float()[:, None]
    assert torch.equal(nets[1](step)[:, 0], Int8DotMatmul.q4_1(codes, scales, minimums)(step[:, 0]).float())
    assert float((nets[1](step) - nets[0](step)).norm() / nets[0](step).norm()) < 0.02


@needs_dot
def test_the_compiled_kernel_is_kept_and_found_again(monkeypatch, tmp_path, fresh_library):
    """Compiled once into the cache folder; found again, marked used; other kernels removed only once unused for
    a month (another source's or compiler's, which a process sharing the cache may be using)."""
    monkeypatch.setenv(local.CACHE_ENV, str(tmp_path))
    folder, month_ago = tmp_path / "kernels", time.time() - int8_dot.UNUSED_S - 60
    folder.mkdir()
    for name in ("int8_dot-0000000000000000.so", "int8_dot-1111111111111111.so"):
        (folder / name).write_bytes(b"another source's")
    os.utime(folder / "int8_dot-0000000000000000.so", (month_ago, month_ago))
    assert int8_dot_missing() is None
    kept = {path.name for path in folder.iterdir()}  # no half-written file or scratch folder either
    assert "int8_dot-0000000000000000.so" not in kept and "int8_dot-1111111111111111.so" in kept and len(kept) == 2
    (ours,) = kept - {"int8_dot-1111111111111111.so"}
    written = (folder / ours).stat().st_ino
    os.utime(folder / ours, (month_ago, month_ago))
    int8_dot._library.cache_clear()
    compiled = []
    monkeypatch.setattr(int8_dot.subprocess, "run", lambda *a, **k: compiled.append(a))
    assert int8_dot_missing() is None and not compiled
    assert (folder / ours).stat().st_ino == written and (folder / ours).stat().st_mtime > month_ago + 60


@needs_dot
def test_a_cached_kernel_that_cannot_be_loaded_is_compiled_again(monkeypatch, tmp_path, fresh_library):
    monkeypatch.setenv(local.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    ours = tmp_path / "kernels" / int8_dot.kernel_name(["cc"])
    ours.parent.mkdir()
    ours.write_bytes(b"damaged")
    assert int8_dot_missing() is None and ours.read_bytes()[:4] == b"\x7fELF"


def test_openmp_runtimes_are_recognised_in_the_process_map():
    line = "7f1-7f2 r-xp 00000000 08:01 1234 {}".format
    mapped = ["/venv/torch/lib/libgomp.so.1", "/x/libgomp-a34b3233.so.1", "/opt/intel/libiomp5.so", "/lib/libomp.so.5"]
    assert all(int8_dot.OPENMP_RUNTIME.search(line(path)) for path in mapped)
    others = ["/usr/lib/libgompish/libc.so.6", "/x/libtorch_cpu.so"]
    assert not any(int8_dot.OPENMP_RUNTIME.search(line(path)) for path in others)


@needs_dot
def test_the_kernel_runs_on_torch_s_openmp_runtime():
    """One OpenMP runtime in the process (torch's), so the kernel's threads are torch's team, not a second pool."""
    assert len(int8_dot._openmp_runtimes()) == 1


def test_a_compiler_s_first_error_line_is_the_reason():
    said = ("/home/terror/int8_dot.c: In function 'quantize':\n/home/terror/int8_dot.c:3:1: warning: -Werror-ish\n"
            "/home/terror/int8_dot.c:40:5: error: unknown type\n   40 | foo\n")  # fmt: skip
    assert int8_dot._compile_error(subprocess.CalledProcessError(1, ["cc"], stderr=said)) == (
        "/home/terror/int8_dot.c:40:5: error: unknown type"
    )
    assert int8_dot._compile_error(subprocess.TimeoutExpired(["cc", "/x"], 300, stderr=b"")) == "no result after 300 s"
    assert int8_dot._compile_error(subprocess.TimeoutExpired(["cc"], 300, stderr=b"cc1: error: x\n")) == "cc1: error: x"
    assert int8_dot._compile_error(subprocess.CalledProcessError(1, ["cc"], stderr="")) == "exit status 1"


@needs_dot
def test_an_unwritable_cache_compiles_in_a_temporary_folder(monkeypatch, tmp_path, fresh_library):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(local.CACHE_ENV, str(blocker))  # its kernels folder cannot be made
    assert int8_dot_missing() is None
    codes, scales, minimums, _ = _blocks(16, 32)
    assert Int8DotMatmul.q4_1(codes, scales, minimums)(_input(2, 32)).shape == (2, 16)


@pytest.mark.parametrize(
    ("setting", "reason"),
    [("compiler", r"could not compile int8_dot\.c with false: exit status 1"),
     ("missing", r"could not compile int8_dot\.c with no-such-cc-here: .*No such file.*"),
     ("platform", "the int8 dot kernel is for Linux on x86-64, not Darwin on arm64"),
     ("cpu", "this CPU lacks AVX-512 VNNI"),
     ("load", r"could not load the compiled int8_dot\.c: libgomp\.so\.1: cannot open shared object file"),
     ("openmp", r"the compiled kernel loaded an OpenMP runtime torch does not use \(libomp\.so\.5\)"),
     ("check", "the compiled int8 dot kernel failed its check: its results are not the reference's")],
)  # fmt: skip
def test_where_the_kernel_cannot_run_packed_layers_keep_torch_s_kernel(
    monkeypatch, tmp_path, caplog, fresh_library, setting, reason
):
    monkeypatch.setenv(local.CACHE_ENV, str(tmp_path))
    if setting == "compiler":
        monkeypatch.setenv("CC", "false")
    elif setting == "missing":
        monkeypatch.setenv("CC", "no-such-cc-here")
    elif setting == "platform":
        monkeypatch.setattr(int8_dot.platform, "system", lambda: "Darwin")
        monkeypatch.setattr(int8_dot.platform, "machine", lambda: "arm64")
    elif setting in ("load", "openmp"):
        if shutil.which("cc") is None:
            pytest.skip("needs a C compiler")
        if setting == "load":

            def unloadable(path: Path) -> None:
                raise int8_dot._NotLoaded("libgomp.so.1: cannot open shared object file")

            monkeypatch.setattr(int8_dot, "_load", unloadable)
        else:
            mapped = iter([{"/torch/lib/libgomp.so.1"}, {"/torch/lib/libgomp.so.1", "/usr/lib/libomp.so.5"}])
            monkeypatch.setattr(int8_dot, "_openmp_runtimes", lambda: next(mapped))
    elif setting == "cpu":
        if int8_dot_missing() is not None:
            pytest.skip(f"needs the kernel compiled: {int8_dot_missing()}")
        int8_dot._library.cache_clear()
        real = int8_dot._compiled

        class WithoutVnni:
            def __init__(self, library: ctypes.CDLL) -> None:
                self.library = library

            def int8_dot_supported(self) -> int:
                return 0

        monkeypatch.setattr(int8_dot, "_compiled", lambda compiler, name: WithoutVnni(real(compiler, name)))
    elif setting == "check":
        if int8_dot_missing() is not None:
            pytest.skip(f"needs the kernel compiled: {int8_dot_missing()}")
        int8_dot._library.cache_clear()
        monkeypatch.setattr(int8_dot, "reference_matmul", lambda x, *blocks: np.zeros((len(x), 48), np.float32))
    import re

    assert re.fullmatch(reason, int8_dot_missing())
    with caplog.at_level("INFO", logger=local.logger.name):
        assert local.resolve_q4_1_matmul() == "int4"
    assert any(reason.split(":")[0].replace("\\", "") in r.getMessage() for r in caplog.records)
    assert local.resolve_q4_1_matmul(quiet=True) == "int4"
    assert not list(Path(tmp_path).glob("kernels/.compiling-*"))  # a failed compile leaves no scratch folder
