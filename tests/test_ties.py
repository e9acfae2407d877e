"""Choices among scores that differ only by round-off break ties by index (``solvers/ties.py``)."""
from __future__ import annotations

import numpy as np

from onnxprune.solvers.ties import decreasing, first_largest, first_smallest, settled


def test_round_off_does_not_reorder():
    ulp_apart = [1.0, 1.0 + 4e-16, 0.5, 0.5 - 1e-16]
    assert np.argsort(-np.asarray(ulp_apart), kind="stable").tolist() == [1, 0, 2, 3]  # what the last bit decides
    assert decreasing(ulp_apart).tolist() == [0, 1, 2, 3]
    assert first_smallest([3.0, 1.0 + 1e-15, 1.0]) == 1
    assert first_largest([2.0 - 1e-15, 1.0, 2.0]) == 0


def test_real_differences_still_order():
    assert decreasing([0.1, 0.3, 0.2]).tolist() == [1, 2, 0]
    assert first_smallest([0.3, 0.1, 0.2]) == 1 and first_largest([0.3, 0.1, 0.5]) == 2


def test_infinities_and_zeros_are_kept():
    assert first_smallest([np.inf, 2.0, np.inf]) == 1
    assert np.array_equal(settled([np.inf, 0.0, 1.0]), [np.inf, 0.0, 1.0])
    assert np.array_equal(settled([0.0, 0.0]), [0.0, 0.0])
