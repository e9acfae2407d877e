"""Streaming float64 sufficient statistics for the linear model y ≈ W x + b (doc §2)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_ARRAY_KEYS = ("T", "sx", "sy", "G", "C", "q")
_BLOCK = 2048  # rows or columns per block of the Gram-sized updates done in place
_WHOLE_GRAM = 8192  # up to this many columns (512 MB) a batch's Gram matrix is added whole


@dataclass(frozen=True)
class CentredStatistics:
    """Centred second moments of (x, y): everything a regression on x needs."""

    G: np.ndarray
    C: np.ndarray
    c0: float
    x_mean: np.ndarray
    y_mean: np.ndarray
    n_samples: int

    @property
    def n_features(self) -> int:
        return self.G.shape[0]

    @property
    def n_targets(self) -> int:
        return self.C.shape[1]


def _as_batch(name: str, a: np.ndarray, width: int) -> np.ndarray:
    """Validate a 2-D batch of `width` columns and return it as float64."""
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"{name} must have shape (n, {width}), got {a.shape}.")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the calibration data.")
    return a


def _subtract_outer(A: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """A −= u vᵀ in place, a block of rows at a time."""
    step = max(1, _BLOCK * _BLOCK // max(A.shape[1], 1))
    for start in range(0, A.shape[0], step):
        A[start:start + step] -= np.outer(u[start:start + step], v)


def _symmetrise(A: np.ndarray) -> None:
    """A ← (A + Aᵀ)/2 in place, block by block (each element is the same (a_ij + a_ji)/2 as done whole)."""
    n = A.shape[0]
    for i in range(0, n, _BLOCK):
        for j in range(i, n, _BLOCK):
            block = 0.5 * (A[i:i + _BLOCK, j:j + _BLOCK] + A[j:j + _BLOCK, i:i + _BLOCK].T)
            A[i:i + _BLOCK, j:j + _BLOCK] = block
            A[j:j + _BLOCK, i:i + _BLOCK] = block.T


class LinearStatistics:
    """Streaming float64 sufficient statistics for y ≈ W x + b (sklearn partial_fit style; additive)."""

    def __init__(self, n_features: int, n_targets: int):
        if n_features < 1 or n_targets < 1:
            raise ValueError(f"n_features and n_targets must be >= 1, got {n_features}, {n_targets}.")
        self.n_features = int(n_features)
        self.n_targets = int(n_targets)
        self.n_samples_seen_ = 0
        self.sum_x_ = np.zeros(n_features)
        self.sum_y_ = np.zeros(n_targets)
        self.gram_ = np.zeros((n_features, n_features))
        self.cross_ = np.zeros((n_features, n_targets))
        self.sum_sq_y_ = 0.0

    def partial_fit(self, X: np.ndarray, Y: np.ndarray) -> LinearStatistics:
        """Add a batch of rows X (n, p) and targets Y (n, M)."""
        X = _as_batch("X", X, self.n_features)
        Y = _as_batch("Y", Y, self.n_targets)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X and Y must have the same number of rows, got {X.shape[0]} and {Y.shape[0]}.")
        self.n_samples_seen_ += X.shape[0]
        self.sum_x_ += X.sum(axis=0)
        self.sum_y_ += Y.sum(axis=0)
        if self.n_features <= _WHOLE_GRAM:
            self.gram_ += X.T @ X
        else:  # a block of columns at a time: no second Gram-sized array (5 GB for 25 088 columns)
            for start in range(0, self.n_features, _BLOCK):
                self.gram_[:, start:start + _BLOCK] += X.T @ X[:, start:start + _BLOCK]
        self.cross_ += X.T @ Y
        self.sum_sq_y_ += float(np.einsum("ij,ij->", Y, Y))
        return self

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
        self.gram_ += other.gram_
        self.cross_ += other.cross_
        self.sum_sq_y_ += other.sum_sq_y_
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
        out.gram_ = self.gram_ - other.gram_
        out.cross_ = self.cross_ - other.cross_
        out.sum_sq_y_ = self.sum_sq_y_ - other.sum_sq_y_
        return out

    def centred(self) -> CentredStatistics:
        """Centre the sums: G/T − x̄x̄ᵀ, C/T − x̄ȳᵀ, c0 = q/T − ‖ȳ‖² (new arrays; no other Gram-sized temporaries)."""
        return self._centre(self.gram_.copy(), self.cross_.copy())

    def centred_in_place(self) -> CentredStatistics:
        """:meth:`centred` computed in the memory of the sums, which are used up: for temporaries such as
        ``full - odd``, it saves a Gram-sized copy. The object must not be used afterwards."""
        G, C = self.gram_, self.cross_
        self.gram_ = self.cross_ = None
        return self._centre(G, C)

    def _centre(self, G: np.ndarray, C: np.ndarray) -> CentredStatistics:
        """Centre the sums G = Σxxᵀ and C = Σxyᵀ in place (arrays the caller gives up)."""
        T = self.n_samples_seen_
        if T == 0:
            raise ValueError("No samples seen; call partial_fit with calibration data first.")
        x_mean = self.sum_x_ / T
        y_mean = self.sum_y_ / T
        G /= T
        _subtract_outer(G, x_mean, x_mean)
        _symmetrise(G)
        C /= T
        _subtract_outer(C, x_mean, y_mean)
        c0 = max(self.sum_sq_y_ / T - float(y_mean @ y_mean), 0.0)
        return CentredStatistics(G=G, C=C, c0=c0, x_mean=x_mean, y_mean=y_mean, n_samples=T)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Raw (uncentred) sums keyed T, sx, sy, G, C, q, e.g. for ``np.savez``: the accumulators themselves,
        not copies (a Gram matrix can take gigabytes), so copy them before changing them."""
        return {
            "T": np.asarray(self.n_samples_seen_, dtype=np.int64),
            "sx": self.sum_x_,
            "sy": self.sum_y_,
            "G": self.gram_,
            "C": self.cross_,
            "q": np.asarray(self.sum_sq_y_, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LinearStatistics:
        """Rebuild from the output of :meth:`to_arrays` (or a loaded ``.npz``)."""
        missing = [k for k in _ARRAY_KEYS if k not in arrays]
        if missing:
            raise ValueError(f"Statistics arrays lack keys {missing}; expected {list(_ARRAY_KEYS)}.")
        C = np.asarray(arrays["C"], dtype=np.float64)
        if C.ndim != 2:
            raise ValueError(f"C must be 2-D, got shape {C.shape}.")
        p, M = C.shape
        stats = cls(p, M)
        shapes = {"sx": (p,), "sy": (M,), "G": (p, p)}
        for key, shape in shapes.items():
            if np.shape(arrays[key]) != shape:
                raise ValueError(f"{key} must have shape {shape}, got {np.shape(arrays[key])}.")
        stats.n_samples_seen_ = int(arrays["T"])
        stats.sum_x_ = np.array(arrays["sx"], dtype=np.float64)
        stats.sum_y_ = np.array(arrays["sy"], dtype=np.float64)
        stats.gram_ = np.array(arrays["G"], dtype=np.float64)
        stats.cross_ = C.copy()
        stats.sum_sq_y_ = float(arrays["q"])
        return stats
