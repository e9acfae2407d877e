"""--backend: numpy/SciPy or torch under the solver's factorisations, solves and Gram products; the same answer."""
from __future__ import annotations

import os
import sys
import types

import numpy as np
import onnx
import pytest

from onnxprune.compress import CompressOptions, compress
from onnxprune.executor import PoolExecutor
from onnxprune.plan import Target
from onnxprune.solvers import ConsumerProblem, LinearStatistics, backend, fit_entropic, refit
from onnxprune.solvers.backend import Backend, BackendError, resolve, using

from conftest import SAMPLES, run_cli

LENET, DIGITS = SAMPLES / "lenet5_digits.onnx", SAMPLES / "digits_calib.npz"
TORCH_CPU = Backend("torch", "cpu")


def _needs_torch():
    return pytest.importorskip("torch", reason="torch is not installed (pip install \"onnxprune[torch]\")")


def _pid(_context, _item):
    return os.getpid()


def test_choices_resolve_and_torch_without_torch_is_refused(monkeypatch):
    assert resolve("numpy") == Backend()
    with pytest.raises(BackendError, match="unknown backend"):
        resolve("jax")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert resolve("auto") == Backend()
    with pytest.raises(BackendError, match="torch is not installed"):
        resolve("torch")
    result = run_cli(["compress", LENET, "--data", DIGITS, "--backend", "torch"])
    assert result.exit_code == 4 and "torch is not installed" in result.output
    assert "Traceback" not in result.output


def test_auto_asks_torch_only_where_the_machine_shows_a_gpu(monkeypatch):
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake)   # a torch that sees a CUDA device
    monkeypatch.setattr(backend, "_gpu_possible", lambda: True)
    assert resolve("auto") == Backend("torch", "cuda")
    monkeypatch.setattr(backend, "_gpu_possible", lambda: False)   # no device files: torch is not asked
    monkeypatch.setitem(sys.modules, "torch", None)                 # (importing it would raise)
    assert resolve("auto") == Backend()


def test_auto_takes_numpy_without_a_cuda_device():
    torch = _needs_torch()
    assert resolve("auto") == (Backend("torch", "cuda") if torch.cuda.is_available() else Backend())


def test_torch_keeps_the_work_in_this_process():
    pids = PoolExecutor(workers=2).map(_pid, [0, 1, 2])
    assert set(pids) != {os.getpid()}
    for chosen in (TORCH_CPU, Backend("torch", "cuda")):
        with using(chosen):
            assert not backend.active().forkable
            assert PoolExecutor(workers=2).map(_pid, [0, 1, 2]) == [os.getpid()] * 3
    assert backend.active() == Backend()


def test_factor_and_solves_read_only_the_lower_triangle():
    """Without ``clean`` the factor keeps A's strict upper triangle and solves as the clean one does; C-ordered
    right-hand sides (solved from the right as their Fortran-ordered transpose), Fortran-ordered ones and vectors all
    give A⁻¹B, in float64 and float32, and in place when asked."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 40))
    A, B = X.T @ X / 300 + 0.1 * np.eye(40), rng.standard_normal((40, 7))
    clean = backend.cholesky(A.copy())
    raw = backend.cholesky(np.asfortranarray(A), clean=False)
    np.testing.assert_array_equal(np.tril(raw), clean)
    np.testing.assert_array_equal(np.triu(raw, 1), np.triu(A, 1))
    expected = np.linalg.solve(A, B)
    for dtype, rtol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        factor = raw.astype(dtype)
        for rhs, want in ((B, expected), (np.asfortranarray(B), expected), (B[:, 2].copy(), expected[:, 2])):
            solved = backend.cho_solve(factor, rhs.astype(dtype))
            assert solved.dtype == dtype and solved.shape == want.shape
            np.testing.assert_allclose(solved, want, rtol=rtol, atol=rtol)
    rhs = B.copy()
    solved = backend.cho_solve(raw, rhs, overwrite=True)
    assert np.shares_memory(solved, rhs)
    np.testing.assert_allclose(solved, expected, rtol=1e-10)
    before = B.copy()
    np.testing.assert_array_equal(backend.cho_solve(raw, B), solved)
    np.testing.assert_array_equal(B, before)   # untouched without ``overwrite``


def test_primitives_agree_with_numpy():
    _needs_torch()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 40))
    A, B = X.T @ X / 300 + 0.1 * np.eye(40), rng.standard_normal((40, 7))
    L = backend.cholesky(A.copy())
    with using(TORCH_CPU):
        L_torch = backend.cholesky(A.copy())
        solved = backend.cho_solve(L_torch, B)
        products = backend.products(X, X[:, :5])
        mixed = backend.cho_solve(L_torch.astype(np.float32), B)  # dtypes mixed as numpy allows
        with pytest.raises(np.linalg.LinAlgError):
            backend.cholesky(-A)
    np.testing.assert_allclose(L_torch, L, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(solved, np.linalg.solve(A, B), rtol=1e-10)
    np.testing.assert_allclose(products, X.T @ X[:, :5], rtol=1e-12)
    np.testing.assert_allclose(mixed, solved, rtol=1e-5)


def test_fit_and_refit_agree_with_numpy():
    _needs_torch()
    rng = np.random.default_rng(1)
    D, K, M = 12, 9, 8
    X = rng.standard_normal((4000, D * K)) @ (np.eye(D * K) + 0.1 * rng.standard_normal((D * K, D * K)))
    Y = X[:, : 4 * K] @ rng.standard_normal((4 * K, M)) + 0.1 * rng.standard_normal((4000, M))
    stats = LinearStatistics(D * K, M).partial_fit(X, Y).centred()
    problem = [ConsumerProblem(stats, np.repeat(np.arange(D), K))]
    fits, refits = [], []
    for chosen in (Backend(), TORCH_CPU):
        with using(chosen):
            fits.append(fit_entropic(problem, D, max_iter=30))
            refits.append(refit(stats, np.arange(5 * K), 1e-4))
    np.testing.assert_allclose(fits[1].w, fits[0].w, rtol=1e-6, atol=1e-12)
    assert list(np.argsort(-fits[1].w)) == list(np.argsort(-fits[0].w))
    np.testing.assert_allclose(refits[1].coef, refits[0].coef, rtol=1e-8, atol=1e-10)


def test_compress_keeps_the_same_channels_and_weights_within_round_off(tmp_path):
    _needs_torch()
    outputs = {}
    for name, chosen in (("numpy", Backend()), ("torch", TORCH_CPU)):
        options = CompressOptions(target=Target("flops", 0.5), backend=chosen)
        result = compress(LENET, DIGITS, options, output=tmp_path / f"{name}.onnx")
        outputs[name] = (onnx.load(tmp_path / f"{name}.onnx"), result.report)
    (ours, report_numpy), (theirs, report_torch) = outputs["numpy"], outputs["torch"]
    assert not any("--backend" in note for note in report_numpy.notes)
    assert any("torch on cpu" in note for note in report_torch.notes)
    mine = {t.name: onnx.numpy_helper.to_array(t) for t in ours.graph.initializer}
    other = {t.name: onnx.numpy_helper.to_array(t) for t in theirs.graph.initializer}
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in other.items()}
    for name, value in mine.items():
        np.testing.assert_allclose(other[name], value, rtol=1e-4, atol=1e-5 * max(np.abs(value).max(), 1e-30))


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [entry["num_threads"] for entry in threadpool_info() if entry["user_api"] == "blas"]


def test_systems_below_the_shared_size_run_on_one_blas_thread_and_wide_ones_on_the_process_count():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(2, user_api="blas"):
        outside = _blas_threads()
        with backend.blas_threads_for(backend.SHARED_BLAS_FROM - 1):
            narrow = _blas_threads()
        with backend.blas_threads_for(backend.SHARED_BLAS_FROM):
            wide = _blas_threads()
        after = _blas_threads()
    assert narrow and all(n == 1 for n in narrow)
    assert wide == outside == after
