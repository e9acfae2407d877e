"""Spread a model-level budget over channel groups from their error curves (greedy, cost-aware)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.costs import CostModel
from onnxprune.solvers.ties import first_largest, first_smallest


@dataclass(frozen=True)
class GroupCurve:
    """One group's ranking and error curve, in global class ids."""

    order: np.ndarray       # class ids, most important first (frozen classes first)
    curve: np.ndarray       # (D+1,) error when keeping the first k of ``order``
    min_keep: int           # never keep fewer (frozen classes, and at least one)
    step: int = 1           # channels are removed and restored this many at a time (--round-to)
    fine_below: int = 0     # at or below this many kept channels, one at a time (--allow-below)
    removable: bool = False  # a residual branch that may also go at once, every channel (onnxprune/depth.py)

    @property
    def fewest(self) -> int:
        """The fewest channels the group can end with."""
        return 0 if self.removable else self.min_keep

    def unit(self, k: int) -> int:
        """How many channels the next removal takes when ``k`` are kept."""
        return 1 if k <= self.fine_below else self.step

    def after_removals(self, k: int, steps: int) -> int:
        """Channels kept after ``steps`` removals from ``k``."""
        for _ in range(steps):
            k -= self.unit(k)
        return k

    def restore_unit(self, k: int) -> int:
        """How many channels the next restoration adds when ``k`` are kept."""
        return 1 if k < self.fine_below else self.step


class _Allocation:
    def __init__(self, curves: list[GroupCurve], cost: CostModel | Budgets, n_classes: int,
                 gone: frozenset[int] = frozenset()):
        self.curves, self.cost = curves, cost
        self.kept = np.ones(n_classes, dtype=bool)
        self.k = [len(c.order) for c in curves]
        self.gone = gone   # removable groups removed whole from the start, never restored
        # each group's cost terms (:meth:`trim`), where a removal's saving depends on those alone
        self._terms = [cost.terms_of(c.order.tolist()) for c in curves] if isinstance(cost, CostModel) else None
        cost.reset()
        for g in sorted(gone):
            self.remove(g, 0)

    def _removal(self, g: int, after: int) -> np.ndarray:
        """The classes group ``g`` loses when it goes down to ``after`` kept."""
        return self.curves[g].order[max(after, 0):self.k[g]]

    def _next_restore(self, g: int) -> np.ndarray:
        c = self.curves[g]
        return c.order[self.k[g]:self.k[g] + c.restore_unit(self.k[g])]

    def removal_score(self, g: int) -> tuple[float, int]:
        """Error added per unit of cost saved by the group's next removal, and the channels kept after it: a
        removal that saves nothing (a measured latency that only drops every few channels) looks further; a
        removable branch may also go whole, when that adds less error per unit of cost."""
        c, k = self.curves[g], self.k[g]
        best, steps = (np.inf, k), 1
        while (after := c.after_removals(k, steps)) >= c.min_keep:
            saving = self.cost.saving(self._removal(g, after))
            if saving > 0:
                best = (max(c.curve[after] - c.curve[k], 0.0) / saving, after)
                break
            steps += 1
        if c.removable and k > 0 and (saving := self.cost.saving(self._removal(g, 0))) > 0:
            whole = max(c.curve[0] - c.curve[k], 0.0) / saving
            if whole < best[0]:   # on a tie, thinning goes first
                best = (whole, 0)
        return best

    def can_restore(self, g: int) -> bool:
        """Whether group ``g`` has removed classes to restore; a removed branch only where that lowers its error."""
        c, k = self.curves[g], self.k[g]
        if g in self.gone:
            return False
        if k == 0 and c.removable:
            return c.curve[min(c.restore_unit(0), len(c.order))] < c.curve[0]
        return k < len(c.order)

    def restore_cost(self, g: int) -> float:
        return self.cost.restore_cost(self._next_restore(g))

    def restore_gain(self, g: int, cost: float) -> float:
        """Error removed per unit cost by restoring group ``g``'s next step, which costs ``cost``."""
        c, k = self.curves[g], self.k[g]
        return (c.curve[k] - c.curve[min(k + c.restore_unit(k), len(c.order))]) / max(cost, 1e-12)

    def remove(self, g: int, after: int) -> None:
        for cls in self._removal(g, after).tolist():
            self.cost.remove(cls)
            self.kept[cls] = False
            self.k[g] -= 1

    def restore(self, g: int) -> None:
        for cls in self._next_restore(g).tolist():
            self.cost.restore(cls)
            self.kept[cls] = True
            self.k[g] += 1

    def trim(self, budget: float, exclude: int | None = None) -> bool:
        """Remove least-error-per-cost classes until under budget; False if that is impossible.

        A removal changes only the scores of its own group and of the groups that share a cost term with it (a layer
        that reads or writes both): only those are scored again (the YOLOv8n layout detector's 107 removals score
        4 601 groups otherwise, 0.35 s of its solve stage). Under several budgets at once (:class:`Budgets`) a
        saving also depends on which budgets are still exceeded, and every removal scores every group."""
        scores: list[tuple[float, int] | None] = [None] * len(self.curves)   # None: to be scored
        while self.cost.cost() > budget:
            scores = [(np.inf, 0) if g == exclude else self.removal_score(g) if score is None else score
                      for g, score in enumerate(scores)]
            if not scores or not np.isfinite(min(scores)[0]):
                return False
            g = first_smallest([score for score, _ in scores])
            after = scores[g][1]
            if self._terms is None:
                self.remove(g, after)
                scores = [None] * len(scores)
                continue
            changed = self.cost.terms_of(self._removal(g, after).tolist())   # before the removal moves k
            self.remove(g, after)
            scores = [None if h == g or not terms.isdisjoint(changed) else score
                      for h, (terms, score) in enumerate(zip(self._terms, scores))]
        return True

    def refill(self, budget: float) -> None:
        """Restore the classes that still fit, best error reduction per unit cost first."""
        while True:
            now = self.cost.cost()
            extra = {g: self.restore_cost(g) for g in range(len(self.curves)) if self.can_restore(g)}
            fits = [g for g, e in extra.items() if now + e <= budget]
            if not fits:
                return
            self.restore(fits[first_largest([self.restore_gain(g, extra[g]) for g in fits])])

    def error(self) -> float:
        """The summed error of every group at its kept count."""
        return float(sum(c.curve[k] for c, k in zip(self.curves, self.k)))

    def exchange(self, budget: float, floor: float, restorable: list[int]) -> bool:
        """Restore one step of a group and remove from one other group alone until under ``budget``: of the pairs
        whose cost lands in (``floor``, ``budget``] without adding error, keep the one of least error. Where
        :meth:`trim` would take its removals from a cheaper but coarser group and fall under ``floor`` again, this
        reaches the pairs in between."""
        best, before = None, self.error()
        payers = [h for h in range(len(self.curves)) if np.isfinite(self.removal_score(h)[0])]
        for g in restorable:
            for h in payers:
                if h == g:
                    continue
                snap = self.snapshot()
                self._pay(g, h, budget)
                error = self.error()
                if floor < self.cost.cost() <= budget and error <= before and (best is None or error < best[0]):
                    best = (error, g, h)
                self.revert(snap)
        if best is None:
            return False
        self._pay(best[1], best[2], budget)
        self.refill(budget)
        return True

    def _pay(self, g: int, h: int, budget: float) -> None:
        """Restore group ``g``'s next step and remove from group ``h`` until under ``budget`` (or ``h`` can go no
        lower)."""
        self.restore(g)
        while self.cost.cost() > budget and np.isfinite((score := self.removal_score(h))[0]):
            self.remove(h, score[1])

    def snapshot(self) -> tuple[np.ndarray, list[int]]:
        return self.kept.copy(), list(self.k)

    def revert(self, snap: tuple[np.ndarray, list[int]]) -> None:
        self.kept, self.k = snap[0].copy(), list(snap[1])
        self.cost.evaluate(self.kept)


class Budgets:
    """Several costs with their budgets, seen by the greedy as one cost with budget 1: the cost is the largest
    share of a budget in use; a removal saves the sum, over the budgets still exceeded, of its saving as a share
    of that budget; a restoration costs how much it raises the largest share."""

    def __init__(self, costs: list[CostModel], budgets: list[float]):
        self.costs, self.budgets = costs, budgets
        self.before = max(c.before / b for c, b in zip(costs, budgets))
        self._now: list[float] | None = None  # each cost in the current state, until the next change

    def _current(self) -> list[float]:
        if self._now is None:
            self._now = [c.cost() for c in self.costs]
        return self._now

    def cost(self) -> float:
        return max(now / b for now, b in zip(self._current(), self.budgets))

    def saving(self, classes) -> float:
        return sum(c.saving(classes) / b for c, b, now in zip(self.costs, self.budgets, self._current()) if now > b)

    def restore_cost(self, classes) -> float:
        return max((now + c.restore_cost(classes)) / b
                   for c, b, now in zip(self.costs, self.budgets, self._current())) - self.cost()

    def remove(self, cls: int) -> None:
        self._change(lambda c: c.remove(cls))

    def restore(self, cls: int) -> None:
        self._change(lambda c: c.restore(cls))

    def reset(self) -> None:
        self._change(lambda c: c.reset())

    def evaluate(self, kept: np.ndarray) -> float:
        self._change(lambda c: c.evaluate(kept))
        return self.cost()

    def _change(self, apply) -> None:
        for c in self.costs:
            apply(c)
        self._now = None


NEAR_EMPTY = 4   # a removable branch keeping fewer than 1/NEAR_EMPTY of a channel block (--allow-below) goes whole


def allocate(curves: list[GroupCurve], cost: CostModel | Budgets, budget: float, n_classes: int,
             tolerance: float = 0.01) -> np.ndarray:
    """Kept-per-class mask whose cost is at most ``budget``, removing least error per unit cost first.

    Greedy: repeatedly drop the last kept class of the group whose next removal adds the least
    error per unit of cost saved; once under budget, restore the classes that still fit. If the
    result is still more than ``tolerance`` (a share of the original cost) under the budget, a
    local search restores a class in one group and trims the others, keeping every step that
    lands closer under the budget, so coarse groups do not make the target overshoot; where no such trim lands
    closer, one restoration paid by removals from a single other group that adds no error
    (:meth:`_Allocation.exchange`).

    A removable branch left with fewer than a ``NEAR_EMPTY``-th of its channel block (counts below the block allowed,
    ``fine_below``: onnxruntime's blocked CPU layout, which computes the branch's first convolution at the whole
    block anyway) is removed whole and the allocation runs again without it, spending its cost elsewhere: ResNet-56
    at half its multiply-adds, batch 64 on the CPU, 0.70 → 0.63 of the original's latency, top-1 80.55 → 80.33 %.
    """
    kept = _allocate(curves, cost, budget, n_classes, tolerance, frozenset())
    near_empty = frozenset(g for g, c in enumerate(curves)
                           if c.removable and 0 < int(kept[c.order].sum()) * NEAR_EMPTY < c.fine_below)
    return _allocate(curves, cost, budget, n_classes, tolerance, near_empty) if near_empty else kept


def _allocate(curves: list[GroupCurve], cost: CostModel | Budgets, budget: float, n_classes: int,
              tolerance: float, gone: frozenset[int]) -> np.ndarray:
    """:func:`allocate` with the groups ``gone`` removed whole from the start."""
    state = _Allocation(curves, cost, n_classes, gone)
    state.trim(budget)
    state.refill(budget)
    for _ in range(4 * sum(len(c.order) for c in curves)):
        current = cost.cost()
        if budget - current <= tolerance * cost.before:
            break
        improved = False
        restorable = sorted((g for g in range(len(curves)) if state.can_restore(g)),
                            key=lambda g: state.restore_gain(g, state.restore_cost(g)), reverse=True)
        for g in restorable:
            snap = state.snapshot()
            state.restore(g)
            if state.trim(budget, exclude=g) and current < cost.cost() <= budget:
                state.refill(budget)
                improved = True
                break
            state.revert(snap)
        if not improved and not state.exchange(budget, current, restorable):
            break
    return state.kept


def minimum_cost(curves: list[GroupCurve], cost: CostModel | Budgets, n_classes: int) -> float:
    """The lowest cost reachable when every group drops to its minimum."""
    kept = np.ones(n_classes, dtype=bool)
    for c in curves:
        kept[c.order[c.fewest:]] = False
    value = cost.evaluate(kept)
    cost.reset()
    return value
