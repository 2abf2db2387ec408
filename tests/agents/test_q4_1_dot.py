"""The compiled int8 dot kernel for Q4_1 layers: what it computes, a row the same alone and in any batch, joined
products, the shapes it refuses, its compiled file cached, and torch's int4 kernel wherever it cannot run."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from aloekit.agents.backends import local, packed, q4_1_dot
from aloekit.agents.backends.q4_1_dot import Q4_1DotMatmul, q4_1_dot_missing, reference_matmul

needs_dot = pytest.mark.skipif(q4_1_dot_missing() is not None, reason=f"no int8 dot kernel: {q4_1_dot_missing()}")
Q4_1 = GGMLQuantizationType.Q4_1


def _blocks(rows: int = 48, columns: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random weight quantized to Q4_1: its codes, scales and minimums, and the weight they decode to."""
    raw = quantize(np.random.default_rng(seed).normal(size=(rows, columns)).astype(np.float32), Q4_1)
    return (*packed._q4_1_blocks(raw), dequantize(raw, Q4_1))


def _input(rows: int, columns: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed)).bfloat16()


@pytest.fixture
def fresh_library(monkeypatch):
    """The kernel found again in this test (its settings patched), and again after it: nothing found under a
    patched setting outlives the test."""
    q4_1_dot._library.cache_clear()
    yield
    monkeypatch.undo()
    q4_1_dot._library.cache_clear()


@needs_dot
def test_the_kernel_computes_its_reference_and_is_close_to_the_float_weights():
    codes, scales, minimums, weight = _blocks()
    x = _input(13, 96)
    out = Q4_1DotMatmul.from_blocks(codes, scales, minimums)(x)
    assert out.dtype == torch.bfloat16 and out.shape == (13, 48)
    expected = reference_matmul(x.float().numpy(), codes, scales, minimums)
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
    out = Q4_1DotMatmul.from_blocks(codes, scales, minimums)(torch.from_numpy(x).bfloat16())
    assert torch.allclose(out.float(), torch.full((1, 16), 16.0))


@needs_dot
def test_a_row_is_the_same_alone_and_in_any_batch():
    codes, scales, minimums, _ = _blocks(64, 128)
    matmul, x = Q4_1DotMatmul.from_blocks(codes, scales, minimums), _input(21, 128)
    whole = matmul(x)
    for row in range(len(x)):
        assert torch.equal(matmul(x[row : row + 1]), whole[row : row + 1])
    for rows in range(1, len(x)):  # 8 rows are multiplied together: partial and several groups of them
        assert torch.equal(matmul(x[:rows]), whole[:rows])
    assert torch.equal(matmul(x[:, :].t().contiguous().t()), whole)  # a strided input is read as its values
    assert matmul(x[:0]).shape == (0, 64)


@needs_dot
def test_a_nan_input_makes_its_row_nan_and_no_other():
    """A float product carries a NaN through; rounding to int8 must not turn it into a number."""
    matmul, x = Q4_1DotMatmul.from_blocks(*_blocks(32, 64)[:3]), _input(3, 64)
    poisoned = x.clone()
    poisoned[1, 40] = float("nan")
    out = matmul(poisoned)
    assert out[1].isnan().all() and torch.equal(out[[0, 2]], matmul(x)[[0, 2]])


@needs_dot
def test_a_joined_product_equals_its_parts_bit_for_bit():
    parts = [Q4_1DotMatmul.from_blocks(*_blocks(n, 64, seed=n)[:3]) for n in (64, 16, 32)]
    joined, x = Q4_1DotMatmul.joined(parts), _input(5, 64)
    assert torch.equal(joined(x), torch.cat([part(x) for part in parts], dim=-1))
    assert Q4_1DotMatmul.joined([parts[0], Q4_1DotMatmul.from_blocks(*_blocks(16, 96)[:3])]) is None


@needs_dot
def test_shapes_the_kernel_refuses_leave_a_layer_float():
    with pytest.raises(RuntimeError, match="multiples of 16"):
        Q4_1DotMatmul.from_blocks(*_blocks(8, 32)[:3])
    matmul = Q4_1DotMatmul.from_blocks(*_blocks(16, 64)[:3])
    with pytest.raises(RuntimeError, match="the input has 32 features, the weight 64"):
        matmul(_input(2, 32))
    codes, scales, minimums, _ = _blocks(8, 32)
    net = torch.nn.Sequential(torch.nn.Linear(32, 8, bias=False))
    arrays = {"0.codes": codes, "0.scales": scales, "0.minimums": minimums}
    assert packed.pack_linears(net, arrays, q4_1_dot=True) == 0


def test_without_the_kernel_a_layer_asked_for_it_stays_float(monkeypatch, fresh_library):
    monkeypatch.setenv("CC", "false")
    codes, scales, minimums, _ = _blocks(16, 32)
    with pytest.raises(RuntimeError, match="no int8 dot kernel: could not compile"):
        Q4_1DotMatmul.from_blocks(codes, scales, minimums)
    net = torch.nn.Sequential(torch.nn.Linear(32, 16, bias=False))
    assert packed.pack_linears(net, {"0.codes": codes, "0.scales": scales, "0.minimums": minimums}, q4_1_dot=True) == 0


@needs_dot
def test_pack_linears_takes_the_kernel_when_asked():
    codes, scales, minimums, weight = _blocks(32, 64)
    arrays = {"0.codes": codes, "0.scales": scales, "0.minimums": minimums}
    nets = []
    for dot in (False, True):
        net = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False))
        net[0].weight.data = torch.from_numpy(weight)
        assert packed.pack_linears(net, arrays, q4_1_dot=dot) == 1
        assert isinstance(net[0].packed_matmul, Q4_1DotMatmul if dot else packed.Q4Matmul)
        nets.append(net)
    step = _input(3, 64).float()[:, None]
    assert torch.equal(nets[1](step)[:, 0], Q4_1DotMatmul.from_blocks(codes, scales, minimums)(step[:, 0]).float())
    assert float((nets[1](step) - nets[0](step)).norm() / nets[0](step).norm()) < 0.02


@needs_dot
def test_the_compiled_kernel_is_kept_and_found_again(monkeypatch, tmp_path, fresh_library):
    monkeypatch.setenv(local.CACHE_ENV, str(tmp_path))
    assert q4_1_dot_missing() is None
    (kept,) = (tmp_path / "kernels").iterdir()  # the library alone: no half-written file or scratch folder
    assert kept.suffix == ".so" and kept.name.startswith("q4_1_dot-")
    written = kept.stat().st_mtime_ns
    q4_1_dot._library.cache_clear()
    compiled = []
    monkeypatch.setattr(q4_1_dot.subprocess, "run", lambda *a, **k: compiled.append(a))
    assert q4_1_dot_missing() is None and not compiled and kept.stat().st_mtime_ns == written


@needs_dot
def test_an_unwritable_cache_compiles_in_a_temporary_folder(monkeypatch, tmp_path, fresh_library):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(local.CACHE_ENV, str(blocker))  # its kernels folder cannot be made
    assert q4_1_dot_missing() is None
    codes, scales, minimums, _ = _blocks(16, 32)
    assert Q4_1DotMatmul.from_blocks(codes, scales, minimums)(_input(2, 32)).shape == (2, 16)


@pytest.mark.parametrize(
    ("setting", "reason"),
    [("compiler", r"could not compile q4_1_dot\.c with false: exit status 1"),
     ("missing", r"could not compile q4_1_dot\.c with no-such-cc-here: .*No such file.*"),
     ("platform", "the int8 dot kernel is for Linux on x86-64, not Darwin on arm64"),
     ("cpu", "this CPU lacks AVX-512 VNNI"),
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
        monkeypatch.setattr(q4_1_dot.platform, "system", lambda: "Darwin")
        monkeypatch.setattr(q4_1_dot.platform, "machine", lambda: "arm64")
    elif setting == "cpu":
        if q4_1_dot_missing() is not None:
            pytest.skip(f"needs the kernel compiled: {q4_1_dot_missing()}")
        q4_1_dot._library.cache_clear()
        real = q4_1_dot._compiled

        class WithoutVnni:
            def __init__(self, library: ctypes.CDLL) -> None:
                self.library = library

            def q4_1_dot_supported(self) -> int:
                return 0

        monkeypatch.setattr(q4_1_dot, "_compiled", lambda compiler, name: WithoutVnni(real(compiler, name)))
    elif setting == "check":
        if q4_1_dot_missing() is not None:
            pytest.skip(f"needs the kernel compiled: {q4_1_dot_missing()}")
        q4_1_dot._library.cache_clear()
        monkeypatch.setattr(q4_1_dot, "reference_matmul", lambda x, *blocks: np.zeros((len(x), 48), np.float32))
    import re

    assert re.fullmatch(reason, q4_1_dot_missing())
    with caplog.at_level("INFO", logger=local.logger.name):
        assert local.resolve_q4_1_matmul() == "int4"
    assert any(reason.split(":")[0].replace("\\", "") in r.getMessage() for r in caplog.records)
    assert local.resolve_q4_1_matmul(quiet=True) == "int4"
    assert not list(Path(tmp_path).glob("kernels/.compiling-*"))  # a failed compile leaves no scratch folder
