"""Search the global budget for the smallest model that still meets a quality goal (--target-fidelity)."""
from __future__ import annotations

from typing import Callable, TypeVar

R = TypeVar("R")


def search_budget(evaluate: Callable[[float], R], good: Callable[[R], bool], floor: float,
                  steps: int = 6) -> tuple[float, R]:
    """The smallest fraction in [floor, 1] found by bisection whose result is ``good``, and that result.

    Assumes quality falls as the fraction falls. Keep-all (1.0) is taken as good without evaluating;
    if no smaller fraction is good, the result at 1.0 is evaluated and returned.
    """
    lo, hi, best = floor, 1.0, None
    first = evaluate(floor)
    if good(first):
        return floor, first
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        result = evaluate(mid)
        if good(result):
            hi, best = mid, result
        else:
            lo = mid
    if best is None:
        return 1.0, evaluate(1.0)
    return hi, best
