"""Decisions that do not hinge on the last ulp (README "Reproducibility").

Scores computed on another CPU (another BLAS kernel, another ONNX Runtime kernel) differ in their last bits.
Orderings and choices among them therefore compare the scores rounded to a relative grid of ``TIE_RTOL`` times
the largest score, and break what is then a tie by index: the lowest index wins.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

TIE_RTOL = 1e-9


def settled(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``values`` rounded to multiples of TIE_RTOL × (largest finite |value|); infinities stay as they are."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    scale = float(np.abs(v[finite]).max(initial=0.0))
    if scale == 0.0:
        return v.copy()
    step = TIE_RTOL * scale
    return np.where(finite, np.round(np.where(finite, v, 0.0) / step) * step, v)


def decreasing(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Indices that order ``values`` from largest to smallest, ties (within the grid) by index."""
    return np.argsort(-settled(values), kind="stable")


def first_smallest(values: Sequence[float] | np.ndarray) -> int:
    """Index of the smallest value, the lowest index among those tied with it."""
    return int(np.argmin(settled(values)))


def first_largest(values: Sequence[float] | np.ndarray) -> int:
    """Index of the largest value, the lowest index among those tied with it."""
    return int(np.argmax(settled(values)))
