"""Parameters and multiply-adds of a model as a function of which channel classes are kept."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Analysis, SliceInitializer
from onnxprune.metrics import ModelCounts

COST_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


class CostModel:
    """Exact cost under channel removal: each sliced tensor or layer costs ``coef × Π kept sizes``.

    ``kind`` is 'flops' (multiply-adds of Conv/ConvTranspose/Gemm/MatMul at batch 1) or 'params'
    (float parameters). Removing or restoring one class updates the cost incrementally.
    """

    def __init__(self, model: onnx.ModelProto, analysis: Analysis, counts: ModelCounts, kind: str):
        if kind not in ("flops", "params"):
            raise ValueError(f"unknown cost kind {kind!r}")
        self.kind = kind
        self.before = float(counts.flops if kind == "flops" else counts.params)   # the original's: budgets' unit
        self.base = self.before   # the cost with every channel kept (below ``before`` where a rewrite saves some)
        nodes = {n.name: n for n in model.graph.node}
        sizes = {i.name: tuple(i.dims) for i in model.graph.initializer}
        axes: dict[str, dict[int, SliceInitializer]] = {}
        for e in analysis.edits:
            if isinstance(e, SliceInitializer):
                axes.setdefault(nodes[e.node].input[e.input_index], {}).setdefault(e.axis, e)
        self.terms: list[tuple[float, list[float]]] = []
        self.term_nodes: list[str] = []   # each term's owner: its node (flops), initializer (params) or tensor
        self.touches: dict[int, list[tuple[int, int, float]]] = {}
        if kind == "params":
            items = [(float(np.prod(sizes[name])), name, name) for name in axes if name in sizes]
        else:
            items = [(float(counts.per_node[n.name][1]), n.input[1], n.name) for n in model.graph.node
                     if n.op_type in COST_OPS and n.name in counts.per_node and len(n.input) > 1 and n.input[1] in axes]
        for value, init, owner in items:
            if value > 0:
                self._add_term(value, [np.bincount(analysis.classes_of(edit.tensor), minlength=analysis.n_classes)
                                       * edit.repeat for _, edit in sorted(axes[init].items())], owner)
        self._add_more_terms(analysis)
        self._orig = [list(d) for _, d in self.terms]   # the sizes with every class kept, from which removals count
        self._sliced_total = self._sum_terms()

    def _add_term(self, value: float, per_class_axes: Sequence[np.ndarray], owner: str) -> None:
        """A term worth ``value`` with every class kept, over axes of the given sizes per class (each the count of
        that class's positions on the axis); ``owner`` names it."""
        t, dims = len(self.terms), []
        for a, per_class in enumerate(per_class_axes):
            for c in np.flatnonzero(per_class).tolist():
                self.touches.setdefault(c, []).append((t, a, float(per_class[c])))
            dims.append(float(per_class.sum()))
        self.terms.append((value / math.prod(dims), dims))
        self.term_nodes.append(owner)

    def _add_more_terms(self, analysis: Analysis) -> None:
        """Terms a cost kind adds to the multiply-add or parameter ones (none here)."""

    def _value(self, t: int, dims: Sequence[float]) -> float:
        """Term ``t``'s cost at the kept sizes ``dims`` (``math.prod``: the allocation evaluates thousands of terms, and
        numpy's wrapper costs more than the product of a few floats)."""
        return self.terms[t][0] * math.prod(dims)

    def shares(self, t: int, dims: Sequence[float] | None = None) -> list[float]:
        """Term ``t``'s kept share (0–1) of each sliced axis at ``dims`` (default: the current state)."""
        return [d / o for d, o in zip(self.terms[t][1] if dims is None else dims, self._orig[t])]

    def _sum_terms(self) -> float:
        return sum(self._value(t, d) for t, (_, d) in enumerate(self.terms))

    def cost(self) -> float:
        """Current cost (with the classes removed so far)."""
        return self.base - self._sliced_total + self._sum_terms()

    def saving(self, classes: int | Sequence[int]) -> float:
        """How much the cost drops if ``classes`` (one class id or several) are removed now."""
        return -self._delta(classes, -1.0)

    def restore_cost(self, classes: int | Sequence[int]) -> float:
        """How much the cost rises if the removed ``classes`` are restored now."""
        return self._delta(classes, +1.0)

    def terms_of(self, classes: Sequence[int]) -> set[int]:
        """The terms whose cost removing or restoring any of ``classes`` changes (the layers and tensors that read or
        write them): a saving or restoration cost of other classes changes only when one of its terms does."""
        return {t for cls in classes for t, _, _ in self.touches.get(cls, ())}

    def remove(self, cls: int) -> None:
        self._apply(cls, -1.0)

    def restore(self, cls: int) -> None:
        self._apply(cls, +1.0)

    def reset(self) -> None:
        self.terms = [(c, list(o)) for (c, _), o in zip(self.terms, self._orig)]

    def evaluate(self, kept: np.ndarray) -> float:
        """Cost for a kept-per-class boolean array (resets the incremental state)."""
        self.reset()
        for cls in np.flatnonzero(~kept).tolist():
            self.remove(cls)
        return self.cost()

    def _delta(self, classes: int | Sequence[int], sign: float) -> float:
        changes: dict[int, list[float]] = {}
        for cls in np.atleast_1d(classes).tolist():
            for t, a, n in self.touches.get(cls, ()):
                dims = changes.setdefault(t, list(self.terms[t][1]))
                dims[a] += sign * n
        return sum(self._value(t, d) - self._value(t, self.terms[t][1]) for t, d in changes.items())

    def _apply(self, cls: int, sign: float) -> None:
        for t, a, n in self.touches.get(cls, ()):
            self.terms[t][1][a] += sign * n
