"""Apply a prune plan to a model: slice weights and constants, install re-fitted weights, fix shapes."""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis.model import Analysis, ChannelRange, SetGroup, ShapeDim, SliceInitializer
from onnxprune.analysis.propagate import attr
from onnxprune.depth import bypassed, vanished
from onnxprune.graph.io import model_inputs
from onnxprune.graph.normalise import opset_of, set_graph_inputs
from onnxprune.plan import PrunePlan
from onnxprune.residual import tensor_producers, tensor_readers
from onnxprune.solvers import Refit


class _Rewriter:
    """Rewrites ``model`` (a copy of it, or the model itself with ``in_place``); ``weights`` gives the shape and
    element type of each consumer's original weight (default: ``model``'s own initializers)."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis, plan: PrunePlan, shapes: bool = True,
                 in_place: bool = False, weights: Mapping[str, tuple[tuple[int, ...], np.dtype]] | None = None):
        self.shapes = shapes
        self.model = model if in_place else copy.deepcopy(model)
        self.analysis = analysis
        self.plan = plan
        self.opset = opset_of(model)
        self.nodes = {n.name: n for n in self.model.graph.node}
        self.inits = {i.name: i for i in self.model.graph.initializer}
        self.taken = set(self.inits) | {t for n in self.model.graph.node for t in list(n.input) + list(n.output)}
        self.weights = weights
        self.identities: set[str] = set()   # nodes made pass-throughs by remove_branches

    # ---- helpers ------------------------------------------------------------------------------
    def mask(self, tensor: str) -> np.ndarray:
        return self.analysis.mask(tensor, self.plan.kept)

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def put(self, node: onnx.NodeProto, index: int, value: np.ndarray, like: str | None = None) -> None:
        """Store ``value`` as a new initializer and point ``node.input[index]`` at it."""
        base = like or (node.input[index] if index < len(node.input) and node.input[index] else f"{node.name}_param{index}")
        name = self.fresh(f"{base}_pruned")
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.model.graph.initializer.append(tensor)
        self.inits[name] = tensor
        while len(node.input) <= index:
            node.input.append("")
        node.input[index] = name

    # ---- passes -------------------------------------------------------------------------------
    def slice_edits(self) -> dict[tuple[str, int], list[SliceInitializer]]:
        by_input: dict[tuple[str, int], list[SliceInitializer]] = defaultdict(list)
        for e in self.analysis.edits:
            if isinstance(e, SliceInitializer):
                by_input[(e.node, e.input_index)].append(e)
        return by_input

    def run(self) -> onnx.ModelProto:
        by_input = self.slice_edits()
        gone = vanished(self.analysis, self.plan.kept)
        for cons in self.analysis.consumers:
            if cons.node in self.plan.refits and cons.node not in gone:
                self.install_refit(cons, self.plan.refits[cons.node], by_input)
        for (node_name, index), edits in by_input.items():
            self.slice_input(self.nodes[node_name], index, edits)
        for e in self.analysis.edits:
            if isinstance(e, SetGroup):
                self.set_attr(self.nodes[e.node], e.attribute, int(self.mask(e.tensor).sum()) // e.size)
            elif isinstance(e, ShapeDim):
                self.shape_dim(self.nodes[e.node], e)
            elif isinstance(e, ChannelRange):
                {"Split": self.split, "Slice": self.slice, "Pad": self.pad}[self.nodes[e.node].op_type](self.nodes[e.node], e.axis)
        self.remove_branches()
        self.finish()
        return self.model

    def remove_branches(self) -> None:
        """Remove every residual branch the plan keeps no channel of (``onnxprune/depth.py``): the Add its last layer
        writes into passes the other input, the shortcut, on alone, and so does a Relu after that Add where the
        shortcut is already rectified; the branch's nodes are gone. Each pass-through is an Identity under the old
        tensor name until :meth:`skip_identities` takes it out of a saved model.

        The branch's mean output is not added back: the error-correcting re-fits after it absorb it, and onnxruntime's
        CPU provider would add such a constant outside its blocked layout, with reorders around it (ResNet-56 with 7
        branches removed, batch 64: 0.55 of the original's latency instead of 0.59; top-1 the same on the plans
        compared, README "Removing whole blocks")."""
        gone = dict.fromkeys(c.node for c in bypassed(self.analysis, self.plan.kept))   # ordered, and a set
        if not gone:
            return
        readers = tensor_readers(self.model)
        producers = tensor_producers(self.model)

        def rectified(tensor: str) -> bool:
            node = producers.get(tensor)
            return node is not None and (node.op_type == "Relu" or node.op_type == "Identity" and rectified(node.input[0]))

        for name in gone:
            out = self.nodes[name].output[0]
            (add,) = readers[out]   # a removable branch's last layer writes only into its residual sum
            shortcut = next(t for t in add.input if t != out)
            after = readers.get(add.output[0], [])
            self.pass_through(add, shortcut)
            if len(after) == 1 and after[0].op_type == "Relu" and rectified(shortcut):
                self.pass_through(after[0], add.output[0])
        empty = {t for t in self.analysis.layouts if not self.mask(t).any()}
        keep = [n for n in self.model.graph.node if n.name not in gone and
                not all(o in empty for o in n.output if o)]
        del self.model.graph.node[:]
        self.model.graph.node.extend(keep)
        self.nodes = {n.name: n for n in keep}

    def pass_through(self, node: onnx.NodeProto, tensor: str) -> None:
        """Make ``node`` an Identity of ``tensor``."""
        node.op_type, node.domain = "Identity", ""
        del node.input[:], node.attribute[:]
        node.input.append(tensor)
        self.identities.add(node.name)

    def skip_identities(self) -> None:
        """Take the pass-throughs of :meth:`remove_branches` out of the graph: their readers read what they pass
        (a graph output keeps its Identity, and so its name)."""
        outputs = {o.name for o in self.model.graph.output}
        source = {n.output[0]: n.input[0] for n in self.model.graph.node
                  if n.name in self.identities and n.output[0] not in outputs}

        def resolved(tensor: str) -> str:
            while tensor in source:
                tensor = source[tensor]
            return tensor

        keep = [n for n in self.model.graph.node if n.output[0] not in source]
        for node in keep:
            for i, tensor in enumerate(node.input):
                node.input[i] = resolved(tensor)
        del self.model.graph.node[:]
        self.model.graph.node.extend(keep)
        self.nodes = {n.name: n for n in keep}

    def fresh(self, base: str) -> str:
        """A tensor name no other tensor of the model has (``base``, else with a number), now taken."""
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}{k}", k + 1
        self.taken.add(name)
        return name

    def slice_input(self, node: onnx.NodeProto, index: int, edits: list[SliceInitializer]) -> None:
        masks = [(e.axis, self.mask(e.tensor)) for e in edits]
        if all(m.all() for _, m in masks):
            return
        value = self.array(node.input[index])
        for axis, m in masks:
            if value.shape[axis] != len(m):
                continue  # already installed at its pruned size (re-fitted consumer input axis)
            value = np.compress(m, value, axis=axis)
        self.put(node, index, value)

    def install_refit(self, cons, fit: Refit, by_input) -> None:
        """Write the re-fitted weights (all outputs, kept inputs) and bias; output slicing follows."""
        node = self.nodes[cons.node]
        if self.weights is None:
            w = self.array(cons.weight)
            shape, dtype = w.shape, w.dtype
        else:
            shape, dtype = self.weights[cons.weight]
        coef, bias = fit.coef, fit.intercept
        if cons.op == "Conv":
            new_w = coef.reshape(shape[0], -1, *shape[2:])
        elif cons.op == "ConvTranspose":  # back from the equivalent Conv's kernel (see consumer_weight_matrix)
            new_w = np.flip(coef.reshape(shape[1], -1, *shape[2:]), tuple(range(2, len(shape)))).swapaxes(0, 1)
        elif cons.op == "Gemm":
            alpha = float(attr(node, "alpha", 1.0))
            new_w = coef / alpha if int(attr(node, "transB", 0)) else (coef / alpha).T
        else:
            new_w = coef.T
        self.put(node, 1, new_w.astype(dtype))
        if cons.op == "MatMul":
            self.add_matmul_bias(node, bias.astype(dtype))
            return
        if cons.op == "Gemm":
            beta = float(attr(node, "beta", 1.0))
            has_c = len(node.input) > 2 and node.input[2]
            if not has_c or beta == 0.0:
                self.set_attr(node, "beta", 1.0, float_=True)
                beta = 1.0
            elif has_c and self.array(node.input[2]).ndim == 2:
                bias = bias[None, :]
            bias = bias / beta
        out = cons.output
        if out in self.analysis.layouts and (node.name, 2) not in by_input:
            bias = np.compress(self.mask(out), bias, axis=-1)
        self.put(node, 2, bias.astype(dtype), like=f"{node.name}_bias" if len(node.input) < 3 or not node.input[2] else None)

    def add_matmul_bias(self, node: onnx.NodeProto, bias: np.ndarray) -> None:
        out = node.output[0]
        if out in self.analysis.layouts:
            bias = np.compress(self.mask(out), bias)
        inner = self.fresh(f"{out}_nobias")
        node.output[0] = inner
        bias_name = self.fresh(f"{node.name}_bias")
        self.model.graph.initializer.append(numpy_helper.from_array(bias, bias_name))
        add = helper.make_node("Add", [inner, bias_name], [out], name=f"{node.name}_bias_add")
        nodes = list(self.model.graph.node)
        nodes.insert(nodes.index(node) + 1, add)
        del self.model.graph.node[:]
        self.model.graph.node.extend(nodes)
        self.nodes = {n.name: n for n in self.model.graph.node}

    def set_attr(self, node: onnx.NodeProto, name: str, value, float_: bool = False) -> None:
        for a in node.attribute:
            if a.name == name:
                node.attribute.remove(a)
                break
        node.attribute.append(helper.make_attribute(name, float(value) if float_ else value))

    def shape_dim(self, node: onnx.NodeProto, e: ShapeDim) -> None:
        m = self.mask(e.tensor)
        if m.all():
            return
        shape = self.array(node.input[e.input_index]).copy()
        shape[e.dim] = int(m.sum())
        self.put(node, e.input_index, shape)

    def split(self, node: onnx.NodeProto, axis: int) -> None:
        sizes = np.array([int(self.mask(o).sum()) for o in node.output], dtype=np.int64)
        if self.opset < 13:
            self.set_attr(node, "split", sizes.tolist())
            return
        for a in list(node.attribute):
            if a.name == "num_outputs":
                node.attribute.remove(a)
        self.put(node, 1, sizes, like=f"{node.name}_split")

    def slice(self, node: onnx.NodeProto, axis: int) -> None:
        m = self.mask(node.input[0])
        n = len(m)
        if self.opset < 10:
            starts, ends, axes = list(attr(node, "starts")), list(attr(node, "ends")), list(attr(node, "axes", range(len(attr(node, "starts")))))
        else:
            starts, ends = self.array(node.input[1]).copy(), self.array(node.input[2]).copy()
            axes = self.array(node.input[3]).tolist() if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
        rank = len(self.analysis.shapes[node.input[0]])
        i = [int(a) % rank for a in axes].index(axis)
        lo, hi = (int(np.clip(v + n if v < 0 else v, 0, n)) for v in (int(starts[i]), int(ends[i])))
        starts[i], ends[i] = int(m[:lo].sum()), int(m[:hi].sum())
        if self.opset < 10:
            self.set_attr(node, "starts", [int(v) for v in starts])
            self.set_attr(node, "ends", [int(v) for v in ends])
        else:
            self.put(node, 1, np.asarray(starts))
            self.put(node, 2, np.asarray(ends))

    def pad(self, node: onnx.NodeProto, axis: int) -> None:
        m = self.mask(node.output[0])
        pads = list(attr(node, "pads")) if self.opset < 11 else self.array(node.input[1]).tolist()
        rank = len(self.analysis.shapes[node.input[0]])
        axes = list(range(rank))
        if self.opset >= 18 and len(node.input) > 3 and node.input[3]:
            axes = [int(a) % rank for a in self.array(node.input[3]).tolist()]
        half = len(pads) // 2
        i = axes.index(axis)
        before, after = pads[i], pads[half + i]
        pads[i], pads[half + i] = int(m[:before].sum()), int(m[len(m) - after:].sum()) if after else 0
        if self.opset < 11:
            self.set_attr(node, "pads", pads)
        else:
            self.put(node, 1, np.asarray(pads, dtype=np.int64))

    def drop_unused(self) -> None:
        """Remove the initializers no node reads any more."""
        used = {t for n in self.model.graph.node for t in n.input}
        keep = [i for i in self.model.graph.initializer if i.name in used]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(keep)

    def finish(self) -> None:
        real_inputs = model_inputs(self.model)
        self.drop_unused()
        del self.model.graph.value_info[:]
        set_graph_inputs(self.model, real_inputs)
        if not self.shapes:
            return
        self.skip_identities()
        try:
            self.infer_shapes()
        except Exception:
            pass  # shapes are optional metadata; the checker verifies the graph itself

    def infer_shapes(self) -> None:
        """Shape inference into value_info; GroupNormalization outputs, which ONNX inference leaves untyped,
        take their input's type."""
        norms = [n for n in self.model.graph.node if n.op_type == "GroupNormalization"]
        for _ in range(len(norms) + 1):
            inferred = onnx.shape_inference.infer_shapes(self.model)
            del self.model.graph.value_info[:]
            self.model.graph.value_info.extend(inferred.graph.value_info)
            known = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.input]}
            extra = [helper.make_value_info(n.output[0], known[n.input[0]].type) for n in norms
                     if n.input[0] in known and n.output[0] not in known]
            if not extra:
                return
            self.model.graph.value_info.extend(extra)


def apply_plan(model: onnx.ModelProto, analysis: Analysis, plan: PrunePlan, *, shapes: bool = True) -> onnx.ModelProto:
    """A new model with the plan's removed channels physically gone and re-fitted weights installed; with
    ``shapes=False`` a model only run, as between re-fit stages: its intermediate shapes are not inferred, and every
    tensor that stays keeps its name (a removed branch's sum stays as an Identity of its shortcut)."""
    return _Rewriter(model, analysis, plan, shapes).run()


def weight_specs(model: onnx.ModelProto, analysis: Analysis) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and element type of every consumer's weight in ``model`` (what :func:`install_refits` needs of the
    original)."""
    inits = {i.name: i for i in model.graph.initializer}
    return {c.weight: (tuple(inits[c.weight].dims), helper.tensor_dtype_to_np_dtype(inits[c.weight].data_type))
            for c in analysis.consumers if c.weight in inits}


def install_refits(pruned: onnx.ModelProto, analysis: Analysis, kept: np.ndarray, refits: Mapping[str, Refit],
                   weights: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Install ``refits`` into ``pruned`` in place, without slicing the rest of the graph again.

    ``pruned`` must be what :func:`apply_plan` made of the original for ``kept`` (with re-fits of other consumers
    or none); it then computes what ``apply_plan`` would give with these re-fits added, up to initializer names.
    ``weights``: :func:`weight_specs` of the original. The error-correct stages install each stage's re-fits so.
    """
    rewriter = _Rewriter(pruned, analysis, PrunePlan(kept, dict(refits), []), shapes=False, in_place=True,
                         weights=weights)
    by_input = rewriter.slice_edits()
    for cons in analysis.consumers:
        if cons.node in refits:
            rewriter.install_refit(cons, refits[cons.node], by_input)
            for index in (1, 2):
                if (cons.node, index) in by_input:
                    rewriter.slice_input(rewriter.nodes[cons.node], index, by_input[(cons.node, index)])
    rewriter.drop_unused()
