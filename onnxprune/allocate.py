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
    step: int = 1           # channels are removed and restored this many at a time (--round-to)


class _Allocation:
    def __init__(self, curves: list[GroupCurve], cost: CostModel, n_classes: int):
        self.curves, self.cost = curves, cost
        self.kept = np.ones(n_classes, dtype=bool)
        self.k = [len(c.order) for c in curves]
        cost.reset()

    def _next_removal(self, g: int) -> np.ndarray:
        c = self.curves[g]
        return c.order[max(self.k[g] - c.step, 0):self.k[g]]

    def _next_restore(self, g: int) -> np.ndarray:
        c = self.curves[g]
        return c.order[self.k[g]:self.k[g] + c.step]

    def removal_score(self, g: int) -> float:
        c = self.curves[g]
        if self.k[g] - c.step < c.min_keep:
            return np.inf
        saving = self.cost.saving(self._next_removal(g))
        if saving <= 0:
            return np.inf
        return max(c.curve[self.k[g] - c.step] - c.curve[self.k[g]], 0.0) / saving

    def can_restore(self, g: int) -> bool:
        return self.k[g] < len(self.curves[g].order)

    def restore_cost(self, g: int) -> float:
        return self.cost.restore_cost(self._next_restore(g))

    def restore_gain(self, g: int, cost: float) -> float:
        """Error removed per unit cost by restoring group ``g``'s next step, which costs ``cost``."""
        c, k = self.curves[g], self.k[g]
        return (c.curve[k] - c.curve[min(k + c.step, len(c.order))]) / max(cost, 1e-12)

    def remove(self, g: int) -> None:
        for cls in self._next_removal(g).tolist():
            self.cost.remove(cls)
            self.kept[cls] = False
            self.k[g] -= 1

    def restore(self, g: int) -> None:
        for cls in self._next_restore(g).tolist():
            self.cost.restore(cls)
            self.kept[cls] = True
            self.k[g] += 1

    def trim(self, budget: float, exclude: int | None = None) -> bool:
        """Remove least-error-per-cost classes until under budget; False if that is impossible."""
        while self.cost.cost() > budget:
            scores = [np.inf if g == exclude else self.removal_score(g) for g in range(len(self.curves))]
            if not scores or not np.isfinite(min(scores)):
                return False
            g = int(np.argmin(scores))
            self.remove(g)
        return True

    def refill(self, budget: float) -> None:
        """Restore the classes that still fit, best error reduction per unit cost first."""
        while True:
            now = self.cost.cost()
            extra = {g: self.restore_cost(g) for g in range(len(self.curves)) if self.can_restore(g)}
            fits = [g for g, e in extra.items() if now + e <= budget]
            if not fits:
                return
            self.restore(max(fits, key=lambda g: self.restore_gain(g, extra[g])))

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
        restorable = [g for g in range(len(curves)) if state.can_restore(g)]
        for g in sorted(restorable, key=lambda g: state.restore_gain(g, state.restore_cost(g)), reverse=True):
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
