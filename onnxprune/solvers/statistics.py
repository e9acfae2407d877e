"""Streaming float64 sufficient statistics for the linear model y ≈ W x + b (doc §2)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_ARRAY_KEYS = ("T", "sx", "sy", "G", "C", "q")


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
        self.gram_ += X.T @ X
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
        """Centre the sums: G/T − x̄x̄ᵀ, C/T − x̄ȳᵀ, c0 = q/T − ‖ȳ‖²."""
        T = self.n_samples_seen_
        if T == 0:
            raise ValueError("No samples seen; call partial_fit with calibration data first.")
        x_mean = self.sum_x_ / T
        y_mean = self.sum_y_ / T
        G = self.gram_ / T - np.outer(x_mean, x_mean)
        G = 0.5 * (G + G.T)
        C = self.cross_ / T - np.outer(x_mean, y_mean)
        c0 = max(self.sum_sq_y_ / T - float(y_mean @ y_mean), 0.0)
        return CentredStatistics(G=G, C=C, c0=c0, x_mean=x_mean, y_mean=y_mean, n_samples=T)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Raw (uncentred) sums keyed T, sx, sy, G, C, q, e.g. for ``np.savez``."""
        return {
            "T": np.asarray(self.n_samples_seen_, dtype=np.int64),
            "sx": self.sum_x_.copy(),
            "sy": self.sum_y_.copy(),
            "G": self.gram_.copy(),
            "C": self.cross_.copy(),
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
