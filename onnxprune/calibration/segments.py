"""A network cut into one segment per stage of the error-correcting re-fit, with the frontier between them.

Stage k wants some tensors (its consumers' inputs in the pruned network, their outputs in the original one,
residual sums). Its segment holds the nodes that compute them from what is already there: the graph inputs and
the tensors earlier segments computed. The *frontier* after stage k is what is there and still read by a later
segment or wanted by a later stage; it is kept per calibration batch (``frontier.py``), so every node of the
network runs once per batch over the whole re-fit instead of once per stage.

Nodes whose value does not depend on a graph input (Constant nodes, shape arithmetic on weights) never enter the
frontier: every segment that needs them runs them itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

import onnx
from onnx import helper

from onnxprune.graph.io import copy_fields, model_inputs
from onnxprune.graph.probe import element_types, node_reads


@dataclass(frozen=True)
class Segment:
    """Stage ``k``'s part of a network: it reads ``inputs`` (graph inputs or frontier tensors), computes
    ``outputs`` (what its stage wants and the frontier keeps of its own results), and leaves ``keep``, the
    frontier after the stage. ``wanted`` are the tensors the stage reads, computed here or kept from before.
    ``seeded``: the first calibration pass already computed ``outputs`` (nothing runs for this segment)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    wanted: tuple[str, ...]
    keep: frozenset[str]
    seeded: bool = False


class TensorGraph:
    """Producers, reads and input dependence of a model's tensors (built once per model, read by
    :func:`schedule` and :func:`segment_model`)."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.inputs = [i.name for i in model_inputs(model)]
        self.producer = {t: k for k, node in enumerate(self.nodes) for t in node.output if t}
        self.reads = [node_reads(node) for node in self.nodes]
        self.dynamic = set(self.inputs)   # tensors whose value depends on a graph input
        for k, node in enumerate(self.nodes):
            if self.reads[k] & self.dynamic:
                self.dynamic.update(t for t in node.output if t)

    def walk(self, targets: Collection[str], there: Collection[str]) -> list[int]:
        """The nodes that compute ``targets`` from the tensors in ``there`` (and weights), in graph order."""
        picked: set[int] = set()
        stack = [t for t in targets if t not in there]
        seen = set(stack)
        while stack:
            k = self.producer.get(stack.pop())
            if k is None or k in picked:
                continue
            picked.add(k)
            for t in self.reads[k]:
                if t not in there and t not in seen:
                    seen.add(t)
                    stack.append(t)
        return sorted(picked)


def schedule(model: onnx.ModelProto, wanted: Sequence[Collection[str]],
             seeded: Collection[str] | None = None) -> list[Segment]:
    """The segments of ``model`` for stages that want the tensors ``wanted[k]``, in order.

    ``seeded``: the tensors a first calibration pass computed with the whole network; the first stage then runs
    nothing and keeps those of its segment's results it has (a later segment recomputes what it lacks).
    """
    graph = TensorGraph(model)
    missing = [t for want in wanted for t in want if t not in graph.producer and t not in graph.inputs]
    if missing:
        raise ValueError(f"no node of the model computes {missing[0]!r}.")
    there = set(graph.inputs)
    steps = []
    for k, want in enumerate(wanted):
        nodes = graph.walk(want, there)
        reads = {t for n in nodes for t in graph.reads[n] if t in there} | {t for t in want if t in there}
        made = {t for n in nodes for t in graph.nodes[n].output if t in graph.dynamic}
        if k == 0 and seeded is not None:
            made &= set(seeded)
            if not set(want) <= made | there:
                raise ValueError("the first pass did not compute what the first stage wants.")
        steps.append((nodes, reads, made, set(want)))
        there |= made
    later: set[str] = set()
    keeps = []
    for nodes, reads, made, want in reversed(steps):
        keeps.append(frozenset(later))
        later |= reads | want
    keeps.reverse()
    segments = []
    there = set(graph.inputs)
    for k, ((nodes, reads, made, want), keep) in enumerate(zip(steps, keeps)):
        there |= made
        outputs = tuple(t for n in nodes for t in graph.nodes[n].output if t in made and (t in keep or t in want))
        segments.append(Segment(tuple(sorted(reads)), outputs, tuple(sorted(want)), frozenset(keep & there),
                                seeded=k == 0 and seeded is not None))
    return segments


def segment_model(model: onnx.ModelProto, segment: Segment, types: dict[str, int] | None = None,
                  graph: TensorGraph | None = None) -> onnx.ModelProto:
    """A model that computes ``segment.outputs`` from ``segment.inputs`` with the nodes and weights of ``model``
    (the same network as the schedule's, possibly with other weights or a re-fitted consumer's bias node);
    ``types`` are the element types of its tensors and ``graph`` its :class:`TensorGraph`, when already at hand."""
    types = element_types(model) if types is None else types
    graph = TensorGraph(model) if graph is None else graph
    there = set(segment.inputs)
    nodes = graph.walk(segment.outputs, there)
    needed = {t for n in nodes for t in graph.reads[n]}
    out = onnx.ModelProto()
    copy_fields(model, out, skip="graph")
    copy_fields(model.graph, out.graph, skip=("node", "initializer", "input", "output", "value_info"))
    out.graph.node.extend(graph.nodes[n] for n in nodes)
    out.graph.initializer.extend(t for t in model.graph.initializer if t.name in needed)
    declared = {i.name: i for i in model.graph.input}
    for name in segment.inputs:
        if name in needed:
            out.graph.input.append(declared[name] if name in declared else
                                   helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
    out.graph.output.extend(helper.make_tensor_value_info(t, types.get(t, onnx.TensorProto.FLOAT), None)
                            for t in segment.outputs)
    return out
