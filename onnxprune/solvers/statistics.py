"""Streaming float64 sufficient statistics for the linear model y ≈ W x + b (doc §2).

While a consumer has seen few rows (T ≤ p/4; a Gemm after Flatten sees one row per sample) its rows
themselves are kept instead of the (p, p) Gram matrix: exact, much smaller, and the solvers then work
in sample space (``lowrank.py``) with G = FᵀF, F the centred rows / √T. Past that limit the rows are
folded into the Gram matrix. Sample-space error curves cost a (T, T) factorisation per channel prefix; where
that would cost more than one (p, p) factorisation they form G (``refit.error_curve``).
"""
from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass, replace

import numpy as np

from . import backend

_SUMS = ("T", "sx", "sy", "q")
_BLOCK = 2048  # rows or columns per block of the Gram-sized updates done in place
_CACHE_BLOCK = 128  # rows or columns per block of the element-wise passes over a Gram matrix (a block and its
# transpose stay in cache: centring a 2 304-column Gram matrix 123 → 28 ms, the same bytes)
_GATHER_ELEMENTS = 2**18  # entries of a matrix gathered at a time by :func:`submatrix`
_WHOLE_GRAM = 8192  # up to this many columns (512 MB) a batch's Gram matrix is added whole
_ROW_DIVISOR = 4  # rows are kept while T ≤ p / _ROW_DIVISOR
# columns up to which a solver may form G = FᵀF from kept rows (128 MB) where that is cheaper: the ranking's held FᵀF
# (``entropic``), an error curve's one (p, p) factorisation (``refit.error_curve``)
GRAM_FROM_ROWS = 4096


@dataclass(frozen=True)
class CentredStatistics:
    """Centred second moments of (x, y): everything a regression on x needs.

    Dense: G (p, p) and C (p, M). Factored (from few rows): F (T, p) and B (T, M), the centred rows
    divided by √T, so that G = FᵀF, C = FᵀB and c0 = ‖B‖²; G and C are then None.
    """

    G: np.ndarray | None
    C: np.ndarray | None
    c0: float
    x_mean: np.ndarray
    y_mean: np.ndarray
    n_samples: int
    F: np.ndarray | None = None
    B: np.ndarray | None = None

    @property
    def factored(self) -> bool:
        return self.F is not None

    @property
    def n_features(self) -> int:
        return self.F.shape[1] if self.factored else self.G.shape[0]

    @property
    def n_targets(self) -> int:
        return self.B.shape[1] if self.factored else self.C.shape[1]

    def gram_diagonal(self, columns: np.ndarray | None = None) -> np.ndarray:
        """diag(G), or diag(G_II) of the given columns."""
        if self.factored:
            F = self.F if columns is None else self.F[:, columns]
            return np.einsum("ti,ti->i", F, F)
        diagonal = np.diagonal(self.G)
        return diagonal if columns is None else diagonal[columns]

    def gram_trace(self, columns: np.ndarray | None = None) -> float:
        """tr(G), or tr(G_II) of the given columns."""
        return float(np.sum(self.gram_diagonal(columns)))

    def dense(self) -> CentredStatistics:
        """These statistics with G = FᵀF and C = FᵀB formed (themselves when already dense)."""
        if not self.factored:
            return self
        return CentredStatistics(self.F.T @ self.F, self.F.T @ self.B, self.c0, self.x_mean, self.y_mean,
                                 self.n_samples)

    def restricted(self, columns: np.ndarray) -> CentredStatistics:
        """The statistics of the given columns only (G_II, C_I, x̄_I; or F_I), gathered once for the fits on them
        (these statistics themselves when the columns are all of them, in order)."""
        columns = np.asarray(columns)
        if columns.size == self.n_features and np.array_equal(columns, np.arange(self.n_features)):
            return self
        if self.factored:
            return replace(self, F=self.F[:, columns], x_mean=self.x_mean[columns])
        return replace(self, G=submatrix(self.G, columns, columns), C=self.C[columns], x_mean=self.x_mean[columns])


PARK_BYTES = 32 << 20   # Gram matrices from this size (2 048 columns) are parked while they wait
_PARKED = itertools.count()
_FOLDER: list[str] = []


def _parking_folder() -> str:
    """This process's temporary folder for parked Gram matrices, removed when it exits."""
    if not _FOLDER:
        _FOLDER.append(tempfile.mkdtemp(prefix="onnxprune-sums-"))
        atexit.register(shutil.rmtree, _FOLDER[0], True)
    return _FOLDER[0]


def _as_batch(name: str, a: np.ndarray, width: int) -> np.ndarray:
    """Validate a 2-D batch of `width` columns and return it as float64."""
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"{name} must have shape (n, {width}), got {a.shape}.")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the calibration data.")
    return a


def _add_products(G: np.ndarray, C: np.ndarray, L: np.ndarray, X: np.ndarray, Y: np.ndarray) -> None:
    """G += LᵀX and C += LᵀY in place; a block of columns at a time for a large G (no second Gram-sized array)."""
    if G.shape[0] <= _WHOLE_GRAM:
        G += backend.products(L, X)
    else:
        for start in range(0, G.shape[0], _BLOCK):
            G[:, start:start + _BLOCK] += backend.products(L, X[:, start:start + _BLOCK])
    C += backend.products(L, Y)


def _without_rows(X: np.ndarray, Y: np.ndarray, Xo: np.ndarray, Yo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of (X, Y) left when one equal row is removed for each row of (Xo, Yo)."""
    rows: dict[bytes, list[int]] = {}
    for i, key in enumerate(map(bytes, np.hstack([X, Y]))):
        rows.setdefault(key, []).append(i)
    keep = np.ones(X.shape[0], dtype=bool)
    for key in map(bytes, np.hstack([Xo, Yo])):
        if not rows.get(key):
            raise ValueError("cannot subtract statistics with rows that are not part of these.")
        keep[rows[key].pop()] = False
    return X[keep], Y[keep]


def submatrix(M: np.ndarray, rows: np.ndarray, columns: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """M[rows][:, columns] for index arrays (written into ``out`` when given, cast to its type): whole rows copied
    first, 2.5× faster than ``np.ix_`` (2 304 columns), a block of rows at a time, so that no temporary as large as
    the result is made (4 000 of 4 608 float32 columns: 33–43 → 22–29 ms)."""
    rows = np.asarray(rows)
    if out is None:
        out = np.empty((rows.size, np.asarray(columns).size), dtype=M.dtype)
    step = max(1, _GATHER_ELEMENTS // max(M.shape[1], 1))
    for start in range(0, rows.size, step):
        block = M.take(rows[start:start + step], axis=0)
        if out.dtype == M.dtype:
            block.take(columns, axis=1, out=out[start:start + step], mode="clip")
        else:
            out[start:start + step] = block.take(columns, axis=1)
    return out


def channel_runs(channels: np.ndarray) -> int:
    """k when every channel owns k consecutive columns and no other column (a Conv's unfolded input, also over part
    of a group's channels or in another order), else 0."""
    if not channels.size:
        return 0
    k = int(np.argmax(channels != channels[0])) or channels.size
    heads = channels[::k]
    if channels.size % k or not np.array_equal(np.repeat(heads, k), channels):
        return 0
    return k if np.unique(heads).size == heads.size else 0


def conv_layout(channels: np.ndarray, n_channels: int) -> int:
    """k when channel d owns exactly the columns [dk, dk + k) (a Conv's unfolded input), else 0."""
    k = channel_runs(channels)
    return k if k and np.array_equal(channels[::k], np.arange(n_channels)) else 0


def block_sum(P: np.ndarray, channels: np.ndarray, n_channels: int, layout: int = 0) -> np.ndarray:
    """EᵀPE: sum a (p, p) matrix over the column blocks of each channel (any column layout; ``layout`` = k of
    :func:`conv_layout` takes a reshape, 7× faster than reduceat)."""
    if layout == 1:  # a column per channel: the blocks are the entries
        return P.astype(np.float64)
    if layout:
        p = channels.size
        return P.reshape(n_channels, layout, p).sum(axis=1).reshape(n_channels, n_channels, layout).sum(
            axis=2, dtype=np.float64)
    perm = np.argsort(channels, kind="stable")
    present, starts = np.unique(channels[perm], return_index=True)
    if not np.array_equal(perm, np.arange(perm.size)):
        P = submatrix(P, perm, perm)
    summed = np.add.reduceat(np.add.reduceat(P, starts, axis=0), starts, axis=1)
    A = np.zeros((n_channels, n_channels))
    A[np.ix_(present, present)] = summed
    return A


def _subtract_outer(A: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """A −= u vᵀ in place, a block of rows at a time."""
    step = max(1, 8 * _CACHE_BLOCK * _CACHE_BLOCK // max(A.shape[1], 1))
    for start in range(0, A.shape[0], step):
        A[start:start + step] -= np.outer(u[start:start + step], v)


def _symmetrise(A: np.ndarray) -> None:
    """A ← (A + Aᵀ)/2 in place, block by block (each element is the same (a_ij + a_ji)/2 as done whole)."""
    n = A.shape[0]
    b = _CACHE_BLOCK
    for i in range(0, n, b):
        for j in range(i, n, b):
            block = 0.5 * (A[i:i + b, j:j + b] + A[j:j + b, i:i + b].T)
            A[i:i + b, j:j + b] = block
            A[j:j + b, i:i + b] = block.T


class LinearStatistics:
    """Streaming float64 sufficient statistics for y ≈ W x + b (sklearn partial_fit style; additive).

    Besides the sums T, Σx, Σy, Σ‖y‖² it holds either the rows themselves, ``rows_x_`` (T, p) and
    ``rows_y_`` (T, M), while T ≤ p/4, or the sums ``gram_`` = Σxxᵀ and ``cross_`` = Σxyᵀ (the others None).
    """

    def __init__(self, n_features: int, n_targets: int):
        if n_features < 1 or n_targets < 1:
            raise ValueError(f"n_features and n_targets must be >= 1, got {n_features}, {n_targets}.")
        self.n_features = int(n_features)
        self.n_targets = int(n_targets)
        self.n_samples_seen_ = 0
        self.sum_x_ = np.zeros(n_features)
        self.sum_y_ = np.zeros(n_targets)
        self.sum_sq_y_ = 0.0
        self.rows_x_: np.ndarray | None = np.zeros((0, n_features))
        self.rows_y_: np.ndarray | None = np.zeros((0, n_targets))
        self._gram: np.ndarray | None = None
        self._gram_file: str | None = None   # where a parked Gram matrix waits (see :meth:`park`)
        self._gram_owner: int | None = None  # the id of the process that parked it
        self.cross_: np.ndarray | None = None

    @property
    def gram_(self) -> np.ndarray | None:
        """Σxxᵀ (None while rows are kept); a parked one is read back, and its file removed, on first use."""
        if self._gram_file is not None:
            self._gram = np.load(self._gram_file)
            self._unpark()
        return self._gram

    @gram_.setter
    def gram_(self, value: np.ndarray | None) -> None:
        self._unpark()
        self._gram = value

    def _unpark(self) -> None:
        """Forget the parked file; remove it only in the process that parked it (a worker forked since shares the
        file with its parent, which still needs it)."""
        if self._gram_file is not None and self._gram_owner == os.getpid():
            os.unlink(self._gram_file)
        self._gram_file = self._gram_owner = None

    @property
    def keeps_rows(self) -> bool:
        return self._gram is None and self._gram_file is None

    def park(self, min_bytes: int = PARK_BYTES) -> None:
        """Move a Gram matrix of at least ``min_bytes`` to a file of this process's temporary folder until it is next
        used (the same bits come back): a partial sum waiting in the pairwise tree (``calibration/blocks.py``) for
        its sibling then holds no memory."""
        if self._gram is None or self._gram.nbytes < min_bytes:
            return
        path = os.path.join(_parking_folder(), f"{id(self)}-{next(_PARKED)}.npy")
        np.save(path, self._gram)
        self._gram, self._gram_file, self._gram_owner = None, path, os.getpid()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_gram=self.gram_, _gram_file=None, _gram_owner=None)   # another process cannot read this one's files
        return state

    def partial_fit(self, X: np.ndarray, Y: np.ndarray) -> LinearStatistics:
        """Add a batch of rows X (n, p) and targets Y (n, M)."""
        X = _as_batch("X", X, self.n_features)
        Y = _as_batch("Y", Y, self.n_targets)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X and Y must have the same number of rows, got {X.shape[0]} and {Y.shape[0]}.")
        return self.add_checked(X, Y)

    def add_checked(self, X: np.ndarray, Y: np.ndarray) -> LinearStatistics:
        """:meth:`partial_fit` of a batch its caller has checked: float64 rows X (n, p) and Y (n, M), all finite
        (calibration checks each consumer's rows as they are drawn, in their own precision: checking them again
        after the cast took 0.8 ms a flush of 4 096 rows of 500 columns)."""
        self.n_samples_seen_ += X.shape[0]
        self.sum_x_ += X.sum(axis=0)
        self.sum_y_ += Y.sum(axis=0)
        self.sum_sq_y_ += float(np.einsum("ij,ij->", Y, Y))
        self._add_rows(X, Y)
        return self

    def _add_rows(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Add rows that the sums already count: kept while T ≤ p/4, else added to the Gram matrix."""
        if self.keeps_rows and _ROW_DIVISOR * self.n_samples_seen_ > self.n_features:
            self._fold_rows()
        if self.keeps_rows:
            self.rows_x_ = np.concatenate([self.rows_x_, X])
            self.rows_y_ = np.concatenate([self.rows_y_, Y])
        else:
            _add_products(self.gram_, self.cross_, X, X, Y)

    def _fold_rows(self) -> None:
        """Replace the kept rows by their Gram and cross-product sums."""
        X, Y = self.rows_x_, self.rows_y_
        self.rows_x_ = self.rows_y_ = None
        self.gram_ = np.zeros((self.n_features, self.n_features))
        self.cross_ = np.zeros((self.n_features, self.n_targets))
        _add_products(self.gram_, self.cross_, X, X, Y)

    def merge(self, other: LinearStatistics) -> LinearStatistics:
        """Add another shard's statistics in place; returns self."""
        if (other.n_features, other.n_targets) != (self.n_features, self.n_targets):
            raise ValueError(
                f"Cannot merge statistics of shape ({other.n_features}, {other.n_targets}) "
                f"into ({self.n_features}, {self.n_targets})."
            )
        self.n_samples_seen_ += other.n_samples_seen_
        self.sum_x_ += other.sum_x_
        self.sum_y_ += other.sum_y_
        self.sum_sq_y_ += other.sum_sq_y_
        if other.keeps_rows:
            self._add_rows(other.rows_x_, other.rows_y_)
            return self
        if self.keeps_rows:
            self._fold_rows()
        self.gram_ += other.gram_
        self.cross_ += other.cross_
        return self

    def __add__(self, other: LinearStatistics) -> LinearStatistics:
        return LinearStatistics(self.n_features, self.n_targets).merge(self).merge(other)

    def __sub__(self, other: LinearStatistics) -> LinearStatistics:
        """The statistics of the rows in ``self`` but not in ``other`` (a shard of it)."""
        if (other.n_features, other.n_targets) != (self.n_features, self.n_targets):
            raise ValueError("cannot subtract statistics of different shapes.")
        out = LinearStatistics(self.n_features, self.n_targets)
        out.n_samples_seen_ = self.n_samples_seen_ - other.n_samples_seen_
        out.sum_x_ = self.sum_x_ - other.sum_x_
        out.sum_y_ = self.sum_y_ - other.sum_y_
        out.sum_sq_y_ = self.sum_sq_y_ - other.sum_sq_y_
        if self.keeps_rows:
            if not other.keeps_rows:
                raise ValueError("cannot subtract statistics of more rows than these hold.")
            out.rows_x_, out.rows_y_ = _without_rows(self.rows_x_, self.rows_y_, other.rows_x_, other.rows_y_)
        elif other.keeps_rows:
            out.rows_x_ = out.rows_y_ = None
            out.gram_, out.cross_ = self.gram_.copy(), self.cross_.copy()
            _add_products(out.gram_, out.cross_, -other.rows_x_, other.rows_x_, other.rows_y_)
        else:
            out.rows_x_ = out.rows_y_ = None
            out.gram_ = self.gram_ - other.gram_
            out.cross_ = self.cross_ - other.cross_
        return out

    def centred(self) -> CentredStatistics:
        """Centre the sums: G/T − x̄x̄ᵀ, C/T − x̄ȳᵀ, c0 = q/T − ‖ȳ‖² (new arrays; no other Gram-sized temporaries),
        or, while rows are kept, factored statistics of the centred rows."""
        if self.keeps_rows:
            return self._centre_rows(self.rows_x_.copy(), self.rows_y_.copy())
        return self._centre(self.gram_.copy(), self.cross_.copy())

    @property
    def writeable(self) -> bool:
        """Whether the sums may be changed in place (not read-only views, such as a Ray task's arguments)."""
        arrays = (self._gram, self.cross_, self.rows_x_, self.rows_y_, self.sum_x_, self.sum_y_)
        return all(a.flags.writeable for a in arrays if a is not None)

    def centred_in_place(self) -> CentredStatistics:
        """:meth:`centred` computed in the memory of the sums, which are used up: for temporaries such as
        ``full - odd``, it saves a Gram-sized copy. The object must not be used afterwards."""
        rows, G, C, X, Y = self.keeps_rows, self.gram_, self.cross_, self.rows_x_, self.rows_y_
        self.gram_ = self.cross_ = self.rows_x_ = self.rows_y_ = None
        return self._centre_rows(X, Y) if rows else self._centre(G, C)

    def _means(self) -> tuple[int, np.ndarray, np.ndarray]:
        T = self.n_samples_seen_
        if T == 0:
            raise ValueError("No samples seen; call partial_fit with calibration data first.")
        return T, self.sum_x_ / T, self.sum_y_ / T

    def _centre(self, G: np.ndarray, C: np.ndarray) -> CentredStatistics:
        """Centre the sums G = Σxxᵀ and C = Σxyᵀ in place (arrays the caller gives up)."""
        T, x_mean, y_mean = self._means()
        G /= T
        _subtract_outer(G, x_mean, x_mean)
        _symmetrise(G)
        C /= T
        _subtract_outer(C, x_mean, y_mean)
        c0 = max(self.sum_sq_y_ / T - float(y_mean @ y_mean), 0.0)
        return CentredStatistics(G=G, C=C, c0=c0, x_mean=x_mean, y_mean=y_mean, n_samples=T)

    def _centre_rows(self, X: np.ndarray, Y: np.ndarray) -> CentredStatistics:
        """Factored statistics F = (X − x̄)/√T, B = (Y − ȳ)/√T, computed in place (arrays the caller gives up).

        The means come from the rows, not the running sums: rows in the same order then give bit-identical
        statistics however they were streamed or sharded."""
        T = self._means()[0]
        x_mean, y_mean = X.mean(axis=0), Y.mean(axis=0)
        X -= x_mean
        X /= np.sqrt(T)
        Y -= y_mean
        Y /= np.sqrt(T)
        c0 = float(np.einsum("tm,tm->", Y, Y))
        return CentredStatistics(G=None, C=None, c0=c0, x_mean=x_mean, y_mean=y_mean, n_samples=T, F=X, B=Y)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Raw (uncentred) sums keyed T, sx, sy, q and G, C (or the rows X, Y while they are kept), e.g. for
        ``np.savez``: the accumulators themselves, not copies (a Gram matrix can take gigabytes), so copy them
        before changing them."""
        arrays = {
            "T": np.asarray(self.n_samples_seen_, dtype=np.int64),
            "sx": self.sum_x_,
            "sy": self.sum_y_,
            "q": np.asarray(self.sum_sq_y_, dtype=np.float64),
        }
        if self.keeps_rows:
            arrays.update(X=self.rows_x_, Y=self.rows_y_)
        else:
            arrays.update(G=self.gram_, C=self.cross_)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LinearStatistics:
        """Rebuild from the output of :meth:`to_arrays` (or a loaded ``.npz``)."""
        rows = "X" in arrays
        keys = (*_SUMS, *(("X", "Y") if rows else ("G", "C")))
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ValueError(f"Statistics arrays lack keys {missing}; expected {list(keys)}.")
        wide = np.asarray(arrays["X" if rows else "C"], dtype=np.float64)
        if wide.ndim != 2:
            raise ValueError(f"{'X' if rows else 'C'} must be 2-D, got shape {wide.shape}.")
        T = int(arrays["T"])
        p, M = (wide.shape[1], np.shape(arrays["Y"])[-1]) if rows else wide.shape
        stats = cls(p, M)
        shapes = {"sx": (p,), "sy": (M,), **({"X": (T, p), "Y": (T, M)} if rows else {"G": (p, p)})}
        for key, shape in shapes.items():
            if np.shape(arrays[key]) != shape:
                raise ValueError(f"{key} must have shape {shape}, got {np.shape(arrays[key])}.")
        stats.n_samples_seen_ = T
        stats.sum_x_ = np.array(arrays["sx"], dtype=np.float64)
        stats.sum_y_ = np.array(arrays["sy"], dtype=np.float64)
        stats.sum_sq_y_ = float(arrays["q"])
        if rows:
            stats._add_rows(wide, np.asarray(arrays["Y"], dtype=np.float64))
        else:
            stats.rows_x_ = stats.rows_y_ = None
            stats.gram_ = np.array(arrays["G"], dtype=np.float64)
            stats.cross_ = wide.copy()
        return stats
