"""Where the solver's dense linear algebra runs: numpy and SciPy (the default), or torch on a CUDA device or the CPU.

The solver calls the primitives below with numpy arrays and gets numpy arrays back, so every stage above them is
the same code whatever the backend: the Cholesky factorisations and solves of the Λ-steps, re-fits and error
curves, and the Gram products of calibration (G += XᵀX, C += XᵀY). ``auto`` takes torch where torch sees a CUDA
device and numpy otherwise: on the CPU, torch 2.13's Cholesky and solve took 1.3× SciPy's time on this project's
sizes (2 304 and 1 152 columns, one thread), so torch on the CPU runs only when asked for. The numpy backend is the
reference: its results are bit-identical whatever else is installed; torch gives the same within round-off.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import os
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import scipy.linalg

BACKENDS = ("auto", "numpy", "torch")
SHARED_BLAS_FROM = 2048   # columns from which a system's factorisation and products use all of the BLAS threads


@dataclass(frozen=True)
class Backend:
    """A resolved backend: ``name`` 'numpy' or 'torch', ``device`` 'cpu' or 'cuda'."""

    name: str = "numpy"
    device: str = "cpu"

    def describe(self) -> str:
        return "numpy" if self.name == "numpy" else f"torch on {self.device}"

    @property
    def forkable(self) -> bool:
        """Whether worker processes forked from this one may run it: not torch, whose thread pool and CUDA context
        do not survive a fork (a forked worker's first torch call can hang)."""
        return self.name == "numpy"


class BackendError(ValueError):
    """A backend that cannot run here (torch asked for but not installed)."""


_ACTIVE = [Backend()]


def resolve(choice: str) -> Backend:
    """The backend of a ``--backend`` choice: auto, numpy or torch (torch on CUDA where it sees a device)."""
    if choice not in BACKENDS:
        raise BackendError(f"unknown backend '{choice}': choose one of {', '.join(BACKENDS)}.")
    if choice == "numpy" or (choice == "auto" and not _gpu_possible()):
        return Backend()
    try:
        import torch
    except ImportError:
        if choice == "torch":
            raise BackendError("torch is not installed here: pip install \"onnxprune[torch]\".") from None
        return Backend()
    cuda = torch.cuda.is_available()
    if choice == "auto" and not cuda:
        return Backend()
    return Backend("torch", "cuda" if cuda else "cpu")


def _gpu_possible() -> bool:
    """False where this machine shows no GPU device (Linux without NVIDIA or ROCm device files): ``auto`` then needs
    no torch import, which takes over a second."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def active() -> Backend:
    """The backend the primitives use now."""
    return _ACTIVE[-1]


@contextlib.contextmanager
def using(backend: Backend) -> Iterator[Backend]:
    """Run the primitives on ``backend`` inside the block, in this process and its threads."""
    _ACTIVE.append(backend)
    try:
        yield backend
    finally:
        _ACTIVE.pop()


@contextlib.contextmanager
def blas_threads_for(columns: int) -> Iterator[None]:
    """Run the block's numpy linear algebra on one BLAS thread below ``SHARED_BLAS_FROM`` columns, else on the
    process's own count. OpenBLAS splits a Cholesky or product of a few hundred to two thousand columns over its
    threads at a loss: on 2 cores, 576 columns took twice as long on two threads (a product with 64 rows 8×), and
    the YOLOv8n layout detector's error-correcting re-fits spent 7.2 s in Cholesky factorisations and 4.3 s in
    residuals instead of 1.6 and 1.0 s (its stage 29.6 → 17.4 s). One thread also makes those results independent
    of the thread count the environment sets (two threads round a factorisation otherwise)."""
    if columns >= SHARED_BLAS_FROM:
        yield
        return
    with blas_threads(1):
        yield


def blas_threads(count: int):
    """A context in which the BLAS libraries loaded in this process (numpy's and SciPy's OpenBLAS) run ``count``
    threads. threadpoolctl's controller, which scans the loaded libraries (0.3–3 ms, with onnxruntime loaded), is
    kept while no module was imported since (a re-fit asks for one thread hundreds of times a run)."""
    return _blas_controller(len(sys.modules)).limit(limits=count, user_api="blas")


@functools.lru_cache(maxsize=1)
def _blas_controller(_modules: int):
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _torch(*arrays: np.ndarray) -> list:
    """The arrays as torch tensors on the active device, in their common dtype (as numpy would compute)."""
    import torch

    device, dtype = active().device, np.result_type(*arrays)
    return [torch.from_numpy(np.ascontiguousarray(a, dtype=dtype)).to(device) for a in arrays]


def cholesky(A: np.ndarray, overwrite: bool = False, clean: bool = True) -> np.ndarray:
    """Lower Cholesky factor of the symmetric positive definite ``A`` (overwritten when ``overwrite``);
    ``np.linalg.LinAlgError`` when it is not positive definite. Without ``clean`` the strict upper triangle keeps
    what ``A`` held there, for solvers that read the lower one only (:func:`cho_solve`, LAPACK's trtrs and sygst):
    zeroing it costs 40 % of the factorisation at 256–1 024 float32 columns (scipy's ``cho_factor`` against
    ``cholesky``)."""
    if active().name == "numpy":
        potrf = scipy.linalg.get_lapack_funcs("potrf", (A,))   # what scipy's cholesky calls, without its wrappers
        factor, info = potrf(A, lower=1, overwrite_a=overwrite, clean=clean)
        _check_info(info, "potrf")
        return factor
    import torch

    factor, info = torch.linalg.cholesky_ex(*_torch(A))
    _check_info(int(info), "cholesky")
    return factor.cpu().numpy()


def _check_info(info: int, routine: str) -> None:
    """LAPACK's (and torch's) status: > 0 a matrix that is not positive definite, < 0 an invalid argument."""
    if info > 0:
        raise np.linalg.LinAlgError("Matrix is not positive definite.")
    if info < 0:
        raise ValueError(f"LAPACK {routine}: illegal value in argument {-info}.")


def cho_solve(factor: np.ndarray, B: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """A⁻¹B from the lower Cholesky factor of A (``B`` overwritten when ``overwrite``, numpy only).

    A C-ordered ``B`` is solved as its Fortran-ordered transpose, (A⁻¹B)ᵀ = BᵀL⁻ᵀL⁻¹, by two triangular solves from
    the right: no copy into Fortran order, and OpenBLAS's right-side solves run 10–30 % faster than LAPACK's potrs
    (256–2 304 columns, 64–256 right-hand sides, one thread)."""
    if active().name == "numpy":
        if B.ndim == 2 and B.flags.c_contiguous and not B.flags.f_contiguous:
            trsm = scipy.linalg.get_blas_funcs("trsm", (factor, B))
            half = trsm(1.0, factor, B.T, side=1, lower=1, trans_a=1, overwrite_b=overwrite)
            return trsm(1.0, factor, half, side=1, lower=1, overwrite_b=True).T
        potrs = scipy.linalg.get_lapack_funcs("potrs", (factor, B))
        solution, info = potrs(factor, B, lower=1, overwrite_b=overwrite)
        _check_info(info, "potrs")
        return solution
    import torch

    L, rhs = _torch(factor, B)
    return torch.cholesky_solve(rhs.reshape(rhs.shape[0], -1), L).reshape(rhs.shape).cpu().numpy()


def products(L: np.ndarray, X: np.ndarray) -> np.ndarray:
    """LᵀX (the Gram products of calibration)."""
    if active().name == "numpy":
        return L.T @ X
    left, right = _torch(L, X)
    return (left.T @ right).cpu().numpy()
