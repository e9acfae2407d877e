"""Turn propagated channel labels into channel groups: what must be pruned together, and what cannot be."""
from __future__ import annotations

import fnmatch
from typing import Mapping, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Analysis, ChannelGroup, Consumer
from onnxprune.analysis.propagate import Propagation
from onnxprune.errors import UsageError
from onnxprune.graph.normalise import initializer_arrays, static_shapes


def find_groups(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None) -> Analysis:
    """Find the channel groups of a normalised model (see :func:`onnxprune.graph.normalise`).

    ``shapes`` maps every tensor to a concrete shape; by default it is inferred with symbolic
    input dimensions set to 1.
    """
    shapes = dict(shapes) if shapes is not None else static_shapes(model)
    prop = Propagation(model, shapes, initializer_arrays(model))
    prop.run()
    return _collect(prop)


def _collect(p: Propagation) -> Analysis:
    n_labels = len(p.parent)
    roots = np.array([p.find(i) for i in range(n_labels)], dtype=np.int64)
    _, class_of_label = np.unique(roots, return_inverse=True)
    n_classes = int(class_of_label.max()) + 1 if n_labels else 0

    frozen = np.zeros(n_classes, dtype=bool)
    reasons: dict[int, list[str]] = {}
    for lab, why in p.frozen.items():
        c = int(class_of_label[lab])
        frozen[c] = True
        if why not in reasons.setdefault(c, []):
            reasons[c].append(why)

    producers_of_class: dict[int, set[str]] = {}
    for lab, prod in enumerate(p.producer_of):
        if prod is not None:
            producers_of_class.setdefault(int(class_of_label[lab]), set()).add(prod)

    # classes are joined into one group by any producer writing them or consumer reading them
    parent = list(range(n_classes))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def join(cs: np.ndarray) -> None:
        cs = np.unique(cs)
        for c in cs[1:].tolist():
            ra, rb = find(int(cs[0])), find(c)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

    for cons in p.consumers:
        join(class_of_label[p.layouts[cons.input].labels])
    by_producer: dict[str, list[int]] = {}
    for lab, prod in enumerate(p.producer_of):
        if prod is not None:
            by_producer.setdefault(prod, []).append(int(class_of_label[lab]))
    for cs in by_producer.values():
        join(np.asarray(cs))
    for labs in p.members.values():
        join(class_of_label[np.asarray(labs, dtype=np.int64)])

    group_root = np.array([find(c) for c in range(n_classes)], dtype=np.int64)
    kept_one = _keep_one_per_tensor(p, class_of_label, group_root, frozen)
    order = _class_order(p, class_of_label, n_classes)
    groups: list[ChannelGroup] = []
    for root in dict.fromkeys(group_root[order].tolist()):
        classes = order[group_root[order] == root]
        cls_set = set(classes.tolist())
        consumers = [c for c in p.consumers if int(class_of_label[p.layouts[c.input].labels[0]]) in cls_set]
        prods = sorted({pr for c in classes.tolist() for pr in producers_of_class.get(c, ())},
                       key=_node_index(p))
        members = [n for n, labs in p.members.items() if int(class_of_label[labs[0]]) in cls_set]
        why = list(dict.fromkeys(r for c in classes.tolist() for r in reasons.get(c, [])))
        if not consumers and not frozen[classes].all():
            why.append("no Conv/ConvTranspose/Gemm/MatMul reads these channels, so there is nothing to re-fit")
        if kept_one[classes].any():
            why.append(f"{int(kept_one[classes].sum())} channel(s) always kept so that no Split/Concat part "
                       "or producer is left without channels")
        groups.append(ChannelGroup(len(groups), classes, frozen[classes].copy(), prods, consumers, members, why))
    return Analysis(p.layouts, class_of_label, n_classes, groups, p.consumers, p.edits, p.shapes, p.blocked)


def _keep_one_per_tensor(p: Propagation, class_of_label: np.ndarray, group_root: np.ndarray,
                         frozen: np.ndarray) -> np.ndarray:
    """Freeze (in place) one class of every tensor that holds only part of its groups, so none loses every channel.

    A group always keeps at least one class, which covers tensors holding a whole group; a Split
    part, a Concat input or one producer's share of a shared group needs a kept class of its own.
    Returns the classes frozen here.
    """
    real = np.zeros(len(frozen), dtype=bool)     # classes with a channel that is not zero padding
    real[class_of_label[~np.asarray(p.zero_label, dtype=bool)]] = True
    size = np.bincount(group_root[real], minlength=len(group_root))
    added = np.zeros(len(frozen), dtype=bool)
    parts = []
    for lay in p.layouts.values():
        classes = np.unique(class_of_label[lay.labels])
        classes = classes[real[classes]]
        roots, counts = np.unique(group_root[classes], return_counts=True)
        if len(classes) and not (counts == size[roots]).any():
            parts.append(classes)
    for classes in sorted(parts, key=len):
        if not frozen[classes].any():
            frozen[classes[0]] = added[classes[0]] = True
    return added


def _class_order(p: Propagation, class_of_label: np.ndarray, n_classes: int) -> np.ndarray:
    """Classes in order of first appearance (graph order, then channel index): stable and readable."""
    seen = np.full(n_classes, -1, dtype=np.int64)
    k = 0
    for lay in p.layouts.values():
        for c in class_of_label[lay.labels].tolist():
            if seen[c] < 0:
                seen[c] = k
                k += 1
    missing = np.flatnonzero(seen < 0)
    seen[missing] = np.arange(k, k + len(missing))
    return np.argsort(seen, kind="stable")


def _node_index(p: Propagation):
    index = {n.name: i for i, n in enumerate(p.model.graph.node)}
    return lambda name: index.get(name, 0)


def consumer_columns(analysis: Analysis, group: ChannelGroup, consumer: Consumer) -> np.ndarray:
    """Group-local channel index of every column of the consumer's unfolded input (the weight's input order)."""
    local = np.full(analysis.n_classes, -1, dtype=np.int64)
    local[group.classes] = np.arange(group.size)
    lay = analysis.layouts[consumer.input]
    per_position = local[analysis.class_of_label[lay.labels]]
    return np.repeat(per_position, lay.repeat * consumer.kernel)


def exclude_nodes(analysis: Analysis, patterns: Sequence[str]) -> list[str]:
    """Freeze every group that a node matching one of the shell-style ``patterns`` writes or reads.

    Returns the matched node names; raises UsageError for a pattern that matches no producer or consumer.
    """
    matched: list[str] = []
    for pattern in patterns:
        hits = []
        for g in analysis.groups:
            names = [n for n in [*g.producers, *(c.node for c in g.consumers)] if fnmatch.fnmatchcase(n, pattern)]
            if names:
                g.frozen[:] = True
                g.reasons.append(f"excluded by --exclude '{pattern}' ({names[0]})")
                hits.extend(names)
        if not hits:
            raise UsageError(f"--exclude '{pattern}' matches no Conv/Gemm/MatMul node of a channel group.",
                             note="'onnxprune analyze -v' lists the node names")
        matched.extend(dict.fromkeys(hits))
    return matched
