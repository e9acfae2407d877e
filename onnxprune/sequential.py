"""Error-correcting re-fit (entropic-regression.md §8): inputs from the pruned network, targets from the original.

Consumers are visited in stages of topological order: a stage holds the consumers none of whose
upstream consumers are still waiting, so one pass over the calibration data serves the whole
stage. Each stage's inputs X' carry the error made upstream while the targets Y stay the original
network's outputs, so each re-fit also absorbs what was lost before it. The kept channels are those
of the global allocation: ranking them again on these statistics was measured to do worse (MNIST CNTK
98.06 % vs 98.34 %, CIFAR tutorial CNN 58.2 % vs 59.0 %).

Every node of either network runs once per calibration batch over the whole re-fit: each stage runs only its
segment of the original and of the pruned network (``calibration/segments.py``), from the frontier the earlier
stages left per batch (``calibration/frontier.py``). The pruned network upstream of a stage is final when the
stage runs (every consumer it holds belongs to an earlier stage and is re-fitted), so its segment is cut from
the model with the re-fits so far installed. The first pass can keep what the first stage needs
(:func:`first_pass_keep`); that stage then runs nothing of the original network. A stage with layers that a ReLU
or Clip follows runs its segments again in shift passes (``rectified.py``), the last of which moves the frontier on.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis.model import Analysis, Consumer
from onnxprune.calibration.collect import CalibrationSettings, ConsumerStats, pass_tensors
from onnxprune.calibration.frontier import FrontierStore
from onnxprune.calibration.segments import Segment, TensorGraph, schedule, segment_model
from onnxprune.calibration.sources import CalibrationData
from onnxprune.calibration.stage_pass import ORIGINAL, PRUNED, StagePass, stage_blocks
from onnxprune.depth import vanished
from onnxprune.executor import Executor, LocalExecutor
from onnxprune.graph.io import model_inputs
from onnxprune.graph.probe import element_types
from onnxprune.heap import reusing_freed_memory
from onnxprune.plan import PrunePlan, SolverSettings, consumer_weight_matrix
from onnxprune.rectified import Activation, TargetShift, rectified_consumers
from onnxprune.residual import Landing
from onnxprune.rewrite import apply_plan, install_refits, weight_specs
from onnxprune.solvers import Refit, refit
from onnxprune.solvers.refit import RidgeFactor
from onnxprune.solvers.shrinkage import refit_towards_factored
from onnxprune.solvers.statistics import LinearStatistics

if TYPE_CHECKING:
    from onnxprune.calibration.parallel import Passes


# a stage whose widest consumer keeps this many input columns or more runs with the heap's reuse (heap.py): Gram-sized
# temporaries (8 MiB and more in float64; glibc maps those past 32 MiB afresh every time) are then most of what it
# allocates and frees. Held from one such stage to the next; a narrower stage hands the kept memory back, so that
# passes over high-resolution maps, where the frontier's tensors come and go, do not grow the heap. Held through
# every stage, the reuse took VGG-16's error-correct stage 46.1-48.0 -> 42.4-43.7 s (in turn) but the YOLOv8
# lookalike's peak 505-513 -> 848 MiB; from 1 024 columns 45.1-45.2 -> 42.0-42.8 s (in turn, another hour) and 484 MiB
# (the PP-OCR lookalike's 953-1 018 -> 1 086); from 2 048, 43.7-43.9 -> 41.3-43.1 s.
REUSE_FROM_COLUMNS = 1024


def _levels(model: onnx.ModelProto, consumers: Sequence[Consumer]) -> dict[str, int]:
    """Per tensor, how many consumers lie on the longest path from the inputs up to and including it."""
    names = {c.node for c in consumers}
    level: dict[str, int] = {}
    for node in model.graph.node:  # nodes are topologically sorted
        base = max((level.get(t, 0) for t in node.input), default=0)
        for t in node.output:
            level[t] = base + 1 if node.name in names else base
    return level


def consumer_stages(model: onnx.ModelProto, consumers: Sequence[Consumer]) -> list[list[Consumer]]:
    """Consumers grouped so that no consumer depends on the output of another in its own or a later stage."""
    return _stages(_levels(model, consumers), consumers)


def _stages(level: Mapping[str, int], consumers: Sequence[Consumer]) -> list[list[Consumer]]:
    """Consumers grouped by the level of their output, in increasing level."""
    stages: dict[int, list[Consumer]] = {}
    for c in consumers:
        stages.setdefault(level[c.output], []).append(c)
    return [stages[k] for k in sorted(stages)]


class _Stages:
    """The stages of a network's consumers and, per stage, the residual landings it targets and the tensors each
    network must give it (the original network's score maps of the ``guides`` among them)."""

    def __init__(self, model: onnx.ModelProto, consumers: Sequence[Consumer], landings: Mapping[str, Landing],
                 guides: Sequence[tuple[str, str]] = ()):
        level = _levels(model, consumers)
        self.stages = _stages(level, consumers)
        # a landing's target needs the other branch final: its consumers all in earlier stages
        self.finals = [{c.node: landings[c.node] for c in stage
                        if c.node in landings and level[landings[c.node].other] < level[c.output]}
                       for stage in self.stages]
        self.wanted = {ORIGINAL: [], PRUNED: []}
        for stage, final in zip(self.stages, self.finals):
            inputs, outputs = pass_tensors(stage, final, guides)
            self.wanted[ORIGINAL].append(outputs)
            self.wanted[PRUNED].append(inputs)

    def original_segments(self, model: onnx.ModelProto, seeded: Sequence[str] | None = None) -> list[Segment]:
        return schedule(model, self.wanted[ORIGINAL], seeded)


def first_pass_keep(model: onnx.ModelProto, consumers: Sequence[Consumer], landings: Mapping[str, Landing],
                    computed: Sequence[str], guides: Sequence[tuple[str, str]] = ()) -> dict[str, tuple[str, ...]]:
    """What a first pass that computes the tensors ``computed`` keeps per batch for :func:`sequential_refit` to
    start from (its ``seeded`` store), by network: the original network's first-stage results the re-fit reads,
    and the graph inputs (the pruned network's first segment starts from them)."""
    first = _Stages(model, consumers, landings, guides).original_segments(model, computed)[0]
    graph_inputs = tuple(i.name for i in model_inputs(model))
    return {ORIGINAL: tuple(dict.fromkeys([*first.outputs, *(t for t in graph_inputs
                                                              if t in first.keep or t in first.wanted)])),
            PRUNED: graph_inputs}


def sequential_refit(model: onnx.ModelProto, analysis: Analysis, plan: PrunePlan, consumers: Sequence[Consumer],
                     data: CalibrationData, indices: Sequence[int], settings: CalibrationSettings,
                     solver: SolverSettings = SolverSettings(),
                     progress: Callable[[int], None] | None = None,
                     landings: Mapping[str, Landing] | None = None,
                     passes: "Passes | None" = None, *, store: FrontierStore | None = None,
                     seeded: Sequence[str] | None = None) -> dict[str, Refit]:
    """Re-fit ``consumers`` stage by stage on error-correcting statistics; returns the re-fits.

    A consumer in ``landings`` (it writes into a residual sum) targets the original sum minus the
    pruned network's other branch once that branch is final (its consumers are in earlier stages).
    ``passes`` runs each stage's pass as tasks of an executor (``calibration/parallel.py``; the same sums).
    ``store`` keeps the frontier between stages (default: a store with the default budget, closed at the end);
    ``seeded``: it already holds what :func:`first_pass_keep` named for a first pass that computed these tensors.
    The store is left empty. ``solver.activation_passes`` shift passes re-fit the layers a ReLU or Clip follows to
    what it lets through (their re-fits carry ``shift_passes``).
    """
    landings = landings or {}
    gone = vanished(analysis, plan.kept)   # removed branches: no layer of theirs is re-fitted
    outputs = {c.node: c.output for c in consumers}
    removed = {outputs[n] for n in gone if n in outputs}   # a removed branch's output: its Add passes the shortcut on
    plan_stages = _Stages(model, [c for c in consumers if c.node not in gone],
                          {n: r for n, r in landings.items() if r.other not in removed}, settings.guides)
    original = plan_stages.original_segments(model, seeded)
    if gone and seeded is not None and store is not None:   # the first pass kept the first stage of every
        stored = first_pass_keep(model, consumers, landings, seeded,   # consumer: still enough?
                                 settings.guides)[ORIGINAL]
        if not set(original[0].outputs) <= set(stored):
            seeded = None
            store.clear()
            original = plan_stages.original_segments(model)
    current = apply_plan(model, analysis, PrunePlan(plan.kept, {}, []), shapes=False)  # re-fits per stage
    specs = weight_specs(model, analysis)
    segments = {ORIGINAL: original, PRUNED: schedule(current, plan_stages.wanted[PRUNED])}
    types = element_types(model)   # pruning changes no element type: one map serves both networks
    original_graph = TensorGraph(model)
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    w_arrays = {c.weight: numpy_helper.to_array(inits[c.weight]) for c in consumers}
    refits: dict[str, Refit] = {c: plan.refits[c] for c in gone if c in plan.refits}   # their errors, for the report
    own = store is None
    store = FrontierStore() if own else store
    executor = LocalExecutor() if passes is None else passes.executor
    # each consumer's landing is final in its own stage: one look at the graph serves every stage
    activations = rectified_consumers(model, [c for stage in plan_stages.stages for c in stage],
                                      {n: r for final in plan_stages.finals for n, r in final.items()}
                                      ) if solver.activation_passes else {}

    def run(step: StagePass) -> dict:
        """The sums of one pass of a stage (its statistics, or a shift pass's target shifts)."""
        return (stage_blocks(step, store, data, indices, settings) if passes is None else
                passes.stage(step, store, data, indices, settings)).total()

    reuse, reusing = contextlib.ExitStack(), False   # the heap's reuse (heap.py), held while the stages are wide
    try:
        for k, (stage, final) in enumerate(zip(plan_stages.stages, plan_stages.finals)):
            networks = {ORIGINAL: model, PRUNED: current}
            cut = {net: segments[net][k] for net in networks}
            graphs = {ORIGINAL: original_graph, PRUNED: None}   # the pruned network changes every stage
            models = {net: None if cut[net].seeded or not cut[net].outputs else
                      segment_model(networks[net], cut[net], types, graphs[net]) for net in networks}
            columns = {c.node: np.repeat(analysis.mask(c.input, plan.kept), c.kernel) for c in stage}
            wide = max(int(kept.sum()) for kept in columns.values()) >= REUSE_FROM_COLUMNS
            if wide and not reusing:
                reuse.enter_context(reusing_freed_memory())
            elif reusing and not wide:
                reuse.close()
            reusing = wide
            masks = {c.node: analysis.mask(c.output, plan.kept) for c in stage if c.node in final}
            rectified = {c.node: activations[c.node] for c in stage if c.node in activations}
            step = StagePass(model, list(stage), cut, models, read_data=k == 0 and seeded is None, landings=final,
                             output_masks=masks, advance=not rectified)
            stats = run(step)
            jobs = []
            for c in stage:
                kept_cols = columns[c.node]
                w0 = consumer_weight_matrix(nodes[c.node], c, w_arrays)[:, kept_cols]
                # X' holds only the kept columns; a consumer re-fitted again keeps its raw sums
                jobs.append((stats.pop(c.node), int(kept_cols.sum()), w0, c.node in rectified, not executor.remote))
            fits = dict(zip((c.node for c in stage), executor.map(_refit_task, jobs, context=solver.delta)))
            done = {node: fit for node, (fit, _, _) in fits.items()}
            if rectified:
                done.update(_shift_passes(run, step, rectified, jobs, fits, solver, executor))
            del jobs, fits   # their raw sums and factors: freed before the next stage's pass and re-fits
            installed = {c.node: done[c.node] for c in stage}
            if k + 1 < len(plan_stages.stages):   # the later stages' pruned network runs with them
                install_refits(current, analysis, plan.kept, installed, specs)
            refits.update(installed)
            if progress:
                progress(len(stage))
    finally:
        reuse.close()
        store.clear()
        if own:
            store.close()
    return refits


def _refit_task(delta: float | None, job: tuple[ConsumerStats, int, np.ndarray, bool, bool]
                ) -> tuple[Refit, float | None, RidgeFactor | None]:
    """One consumer's re-fit on its error-correcting statistics (a task of the stage when an executor runs them):
    towards its original weights ``w0`` with a validated ridge, or with the fixed ridge ``delta``; returns the fit,
    the relative ridge it validated (None with ``delta``) and, for a consumer a shift pass re-fits again (``keep``:
    its raw sums stay as they are, the pass adds to them) in the driver's process (``local``), what it factored."""
    entry, n_kept, w0, keep, local = job
    cols = np.arange(n_kept)
    # the sums are not needed again: centred in their own memory, unless they are a task's read-only arguments
    folds = entry.folds(use_up=True) if delta is None else None
    sums = entry.full
    centred = sums.centred_in_place() if sums.writeable and not keep else sums.centred()
    if delta is None:
        fit, rel, factor = refit_towards_factored(centred, cols, w0, folds)
        return fit, rel, factor if keep and local else None
    return refit(centred, cols, delta), None, None


def _shifted_refit_task(delta: float | None, job: tuple[LinearStatistics, int, np.ndarray, float | None,
                                                        RidgeFactor | None]) -> tuple[Refit, RidgeFactor | None]:
    """A re-fit on raw sums whose targets a shift pass moved, with the ridge the plain targets validated (and the
    factor of the plain re-fit, when at hand: the Gram matrix is the same); returns it and that factor."""
    sums, n_kept, w0, ridge, factor = job
    cols = np.arange(n_kept)
    centred = sums.centred_in_place() if sums.writeable else sums.centred()
    if ridge is None:
        return refit(centred, cols, delta), None
    fit, _, factor = refit_towards_factored(centred, cols, w0, ridge=ridge, reuse=factor)
    return fit, factor


def _shift_passes(run: Callable[[StagePass], dict], step: StagePass, rectified: Mapping[str, Activation],
                  jobs: Sequence[tuple], fits: Mapping[str, tuple[Refit, float | None, RidgeFactor | None]],
                  solver: SolverSettings, executor: Executor) -> dict[str, Refit]:
    """``solver.activation_passes`` shift passes of one stage (``rectified.py``), the last one advancing the
    frontier; returns the rectified consumers' final re-fits. Consumers whose statistics are factored (few rows)
    keep their plain re-fit. Each re-fit solves with the plain re-fit's factor where it came back (the Gram matrix
    does not change)."""
    plain = {c.node: (entry.full, n_kept, w0) for c, (entry, n_kept, w0, *_) in zip(step.consumers, jobs)
             if c.node in rectified and not entry.full.keeps_rows}
    latest = {node: fits[node][0] for node in plain}
    factors = {node: fits[node][2] for node in plain}
    for k in range(solver.activation_passes):
        last = k + 1 == solver.activation_passes or not plain   # none to shift: one pass to advance the frontier
        shifts = {node: TargetShift(rectified[node], fit.coef.astype(np.float32), fit.intercept.astype(np.float32),
                                    node in step.landings) for node, fit in latest.items()}
        sums = run(dataclasses.replace(step, shifts=shifts, advance=last))
        if not plain:
            break
        tasks = [(sums[node].shifted(raw, use_up=last), n_kept, w0, fits[node][1], factors[node])
                 for node, (raw, n_kept, w0) in plain.items()]
        results = dict(zip(plain, executor.map(_shifted_refit_task, tasks, context=solver.delta)))
        latest = {node: fit for node, (fit, _) in results.items()}
        factors = {node: factor for node, (_, factor) in results.items()}
    return {node: dataclasses.replace(fit, shift_passes=solver.activation_passes) for node, fit in latest.items()}


def refit_errors(refits: Mapping[str, Refit], analysis: Analysis) -> dict[int, float]:
    """Mean re-fit error per group id over its re-fitted consumers."""
    out: dict[int, list[float]] = {}
    for g in analysis.groups:
        for c in g.consumers:
            if c.node in refits:
                out.setdefault(g.id, []).append(refits[c.node].error)
    return {k: float(np.mean(v)) for k, v in out.items()}
