"""Spread a model-level budget over channel groups from their error curves (greedy, cost-aware)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.costs import CostModel


@dataclass(frozen=True)
class GroupCurve:
    """One group's ranking and error curve, in global class ids."""

    order: np.ndarray       # class ids, most important first (frozen classes first)
    curve: np.ndarray       # (D+1,) error when keeping the first k of ``order``
    min_keep: int           # never keep fewer (frozen classes, and at least one)


class _Allocation:
    def __init__(self, curves: list[GroupCurve], cost: CostModel, n_classes: int):
        self.curves, self.cost = curves, cost
        self.kept = np.ones(n_classes, dtype=bool)
        self.k = [len(c.order) for c in curves]
        cost.reset()

    def removal_score(self, g: int) -> float:
        c = self.curves[g]
        if self.k[g] <= c.min_keep:
            return np.inf
        saving = self.cost.saving(int(c.order[self.k[g] - 1]))
        if saving <= 0:
            return np.inf
        return max(c.curve[self.k[g] - 1] - c.curve[self.k[g]], 0.0) / saving

    def restore_gain(self, g: int) -> float:
        c = self.curves[g]
        if self.k[g] >= len(c.order):
            return -np.inf
        extra = self.cost.restore_cost(int(c.order[self.k[g]]))
        return (c.curve[self.k[g]] - c.curve[self.k[g] + 1]) / max(extra, 1e-12)

    def remove(self, g: int) -> None:
        cls = int(self.curves[g].order[self.k[g] - 1])
        self.cost.remove(cls)
        self.kept[cls] = False
        self.k[g] -= 1

    def restore(self, g: int) -> None:
        cls = int(self.curves[g].order[self.k[g]])
        self.cost.restore(cls)
        self.kept[cls] = True
        self.k[g] += 1

    def trim(self, budget: float, exclude: int | None = None) -> bool:
        """Remove least-error-per-cost classes until under budget; False if that is impossible."""
        while self.cost.cost() > budget:
            scores = [np.inf if g == exclude else self.removal_score(g) for g in range(len(self.curves))]
            g = int(np.argmin(scores))
            if not np.isfinite(scores[g]):
                return False
            self.remove(g)
        return True

    def refill(self, budget: float) -> None:
        """Restore the classes that still fit, best error reduction per unit cost first."""
        while True:
            fits = [g for g in range(len(self.curves)) if self.k[g] < len(self.curves[g].order)
                    and self.cost.cost() + self.cost.restore_cost(int(self.curves[g].order[self.k[g]])) <= budget]
            if not fits:
                return
            self.restore(max(fits, key=self.restore_gain))

    def snapshot(self) -> tuple[np.ndarray, list[int]]:
        return self.kept.copy(), list(self.k)

    def revert(self, snap: tuple[np.ndarray, list[int]]) -> None:
        self.kept, self.k = snap[0].copy(), list(snap[1])
        self.cost.evaluate(self.kept)


def allocate(curves: list[GroupCurve], cost: CostModel, budget: float, n_classes: int,
             tolerance: float = 0.01) -> np.ndarray:
    """Kept-per-class mask whose cost is at most ``budget``, removing least error per unit cost first.

    Greedy: repeatedly drop the last kept class of the group whose next removal adds the least
    error per unit of cost saved; once under budget, restore the classes that still fit. If the
    result is still more than ``tolerance`` (a share of the original cost) under the budget, a
    local search restores a class in one group and trims the others, keeping every step that
    lands closer under the budget, so coarse groups do not make the target overshoot.
    """
    state = _Allocation(curves, cost, n_classes)
    state.trim(budget)
    state.refill(budget)
    for _ in range(4 * sum(len(c.order) for c in curves)):
        current = cost.cost()
        if budget - current <= tolerance * cost.before:
            break
        improved = False
        for g in sorted(range(len(curves)), key=state.restore_gain, reverse=True):
            if state.k[g] >= len(curves[g].order):
                continue
            snap = state.snapshot()
            state.restore(g)
            if state.trim(budget, exclude=g) and current < cost.cost() <= budget:
                state.refill(budget)
                improved = True
                break
            state.revert(snap)
        if not improved:
            break
    return state.kept


def minimum_cost(curves: list[GroupCurve], cost: CostModel, n_classes: int) -> float:
    """The lowest cost reachable when every group drops to its minimum."""
    kept = np.ones(n_classes, dtype=bool)
    for c in curves:
        kept[c.order[c.min_keep:]] = False
    value = cost.evaluate(kept)
    cost.reset()
    return value
