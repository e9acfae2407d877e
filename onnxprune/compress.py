"""The compress pipeline: load → groups → calibrate → solve → rewrite → verify → save."""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Protocol

import numpy as np
import onnx

from onnxprune.analysis import Analysis, Consumer, exclude_nodes, find_groups
from onnxprune.analysis.score_heads import score_guides, score_note
from onnxprune.atomic import removed_on_error
from onnxprune.bench.compare import BenchSettings, compare_models
from onnxprune.bench.inputs import feeds_for_batch, input_specs as bench_input_specs
from onnxprune.bench.memory import read_peak_rss, reset_peak_rss
from onnxprune.bench.profile import cpu_channel_block
from onnxprune.bench.providers import resolve_providers
from onnxprune.calibration.augment import Augmentation, augmented
from onnxprune.calibration.cache import StatsCache
from onnxprune.calibration.collect import CalibrationSettings, Keep, calibration_batch, choose_batch
from onnxprune.calibration.frontier import FrontierStore
from onnxprune.calibration.parallel import Passes
from onnxprune.calibration.sources import CalibrationData, ImageOptions, InputSpec, open_data
from onnxprune.calibration.store import FirstPass, sum_shards
from onnxprune.depth import bypassed
from onnxprune.distil import DistilOutcome, DistilSettings, check_distillable, distil
from onnxprune.errors import OnnxPruneWarning, UsageError, during
from onnxprune.executor import Executor, LocalExecutor
from onnxprune.graph.input_shapes import known_dim
from onnxprune.graph.io import check_output_path, load_model, model_inputs, save_model
from onnxprune.graph.normalise import normalise, static_shapes
from onnxprune.graph.precision import refuse_quantised, restore_float16, to_float32
from onnxprune.graph.probe import onnx_to_numpy_dtype
from onnxprune.graph.subnormal import count_subnormals, flush_subnormals
from onnxprune.latency import (ROUNDS, LatencyCheck, LatencyCost, LatencyTarget, check_latency, copies,
                               measure_latency, uniform_mask)
from onnxprune.metrics import ModelCounts, block_flops, count_model
from onnxprune.plan import (AllocationSettings, LatencyBudget, PrunePlan, RankedGroup, SolverSettings, Target,
                            check_method, check_target, grouped_conv_groups, latency_default, minimum_fraction,
                            near_output_default, output_means, rank_groups, ranking_identity, solve)
from onnxprune.report import PruneReport
from onnxprune.residual import residual_landings
from onnxprune.rewrite import apply_plan
from onnxprune.rewrite.layout import added_cost, shortcut_convs
from onnxprune.sensitivity import SAMPLES, calibrate_curves, output_gains
from onnxprune.sequential import consumer_stages, first_pass_keep, refit_errors, sequential_refit
from onnxprune.search import search_budget
from onnxprune.solvers import backend as solver_backend
from onnxprune.solvers.backend import Backend
from onnxprune.fidelity_kinds import HEADLINE_LABELS, KINDS as FIDELITY_KINDS, choose_judge
from onnxprune.verify import Fidelity, check_pruned, measure_fidelity


class ProgressBar(Protocol):
    def update(self, n: int) -> None: ...


ProgressFactory = Callable[[str, int], "contextlib.AbstractContextManager[ProgressBar]"]


@dataclass(frozen=True)
class CompressOptions:
    """Everything ``compress`` needs besides the model and data paths."""

    target: Target | None = None
    solver: SolverSettings = field(default_factory=SolverSettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    image: ImageOptions = field(default_factory=ImageOptions)
    num_samples: int | None = None
    holdout: float = 0.1
    independent: bool = False     # paper's layer-by-layer statistics from the original network only
    bench: BenchSettings | None = None  # measure original and pruned latency on the calibration provider
    stats_files: tuple[str | os.PathLike, ...] = ()  # `onnxprune calibrate` shards summed instead of the first pass
    cache_dir: str | os.PathLike | None = None       # first-pass statistics kept between runs
    allocation: AllocationSettings = field(default_factory=AllocationSettings)  # --min-keep, --round-to
    target_fidelity: float | None = None  # prune as far as the held-out headline fidelity stays at least this
    fidelity: str = "auto"        # how the held-out outputs are judged: auto, classes, sequence, dense, yolo
    exclude: tuple[str, ...] = ()     # node-name patterns whose groups are left alone
    latency: LatencyTarget | None = None  # a latency budget on the calibration provider, besides the target
    # bytes of per-batch tensors the error-correcting pass keeps in memory (beyond: memory-mapped temporary files);
    # None: half the memory available when the run starts
    memory_budget: int | None = None
    # what the allocation weighs groups by: "layers" (their consumers' re-fit errors) or "outputs" (those curves
    # scaled by each group's measured reach to the model's outputs, onnxprune/sensitivity.py)
    allocate_by: str = "layers"
    # transformed copies of each calibration sample (--augment; calibration/augment.py)
    augment: Augmentation = field(default_factory=Augmentation)
    # dense score heads' layers sample positions where the original scores high (analysis/score_heads.py)
    score_positions: bool = True
    # where the calibration passes and per-group rankings run (None: this process); see onnxprune/executor.py
    executor: Executor | None = field(default=None, compare=False)
    # what runs the solver's factorisations and Gram products (--backend; onnxprune/solvers/backend.py)
    backend: Backend = field(default_factory=Backend)
    # epochs of tuning the pruned weights toward the original's outputs after the rewrite (--distil; distil.py)
    distil: DistilSettings = field(default_factory=DistilSettings)
    # channel-padding shortcuts written as 1x1 convolutions (rewrite/layout.py); None: with the CPU provider and a
    # FLOPs, latency or fidelity target (see backend_layout)
    shortcut_convs: bool | None = None
    # subnormal float32 weights set to zero in the pruned model (graph/subnormal.py; --keep-subnormals: False)
    flush_subnormals: bool = True

    @property
    def error_correcting(self) -> bool:
        """Whether consumers are re-fitted stage by stage on statistics of the network pruned so far."""
        return not self.independent and self.solver.refit


@dataclass
class CompressResult:
    """The pruned model (not yet written unless an output was given) and the report."""

    model: onnx.ModelProto
    report: PruneReport
    plan: PrunePlan
    analysis: Analysis


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs as data-loader specs."""
    specs = []
    for inp in model_inputs(model):
        tt = inp.type.tensor_type
        dims = tuple(known_dim(d) or d.dim_param or None for d in tt.shape.dim)
        specs.append(InputSpec(inp.name, onnx_to_numpy_dtype(tt.elem_type), dims))
    return specs


class Loaded(NamedTuple):
    """The load stage: the original model, its normalised form, the float32 model that is analysed and
    calibrated, its input specs, the data with its calibration and held-out indices, static shapes, and the input
    shapes they were inferred at (batch 1: the first calibration sample's)."""

    original: onnx.ModelProto
    reference: onnx.ModelProto
    model: onnx.ModelProto
    specs: list[InputSpec]
    data: CalibrationData
    calib_idx: np.ndarray
    hold_idx: np.ndarray
    shapes: dict
    input_shapes: dict


def load_inputs(model_path: str | os.PathLike, data_path: str | os.PathLike, options: CompressOptions) -> Loaded:
    """Load and normalise the model, open the data and split it (seeded) as every compress run does."""
    original = load_model(model_path)
    refuse_quantised(original)
    reference = normalise(original)
    model = to_float32(reference)  # float16 models are analysed and calibrated in float32
    specs = input_specs(model)
    data = open_data(data_path, specs, image_options=options.image, num_samples=options.num_samples,
                     seed=options.calibration.seed)
    calib_idx, hold_idx = data.split(options.holdout, seed=options.calibration.seed)
    data, calib_idx = augmented(data, calib_idx, options.augment, options.calibration.seed, options.image.layout)
    sample = data.load([int(calib_idx[0])])
    input_shapes = {k: (1, *v.shape[1:]) for k, v in sample.items()}
    shapes = static_shapes(model, input_shapes)
    return Loaded(original, reference, model, specs, data, calib_idx, hold_idx, shapes, input_shapes)


def with_chosen_batch(options: CompressOptions, loaded: Loaded) -> CompressOptions:
    """``options`` with the calibration batch size that :func:`choose_batch` picks for the loaded model and data,
    where none was given (``--batch-size``)."""
    if options.calibration.batch_size is not None:
        return options
    chosen = choose_batch(loaded.model, loaded.shapes)
    return replace(options, calibration=replace(options.calibration, batch_size=chosen))


def calibrated_consumers(analysis: Analysis) -> list[Consumer]:
    """The consumers whose statistics the first calibration pass collects: those of the prunable groups."""
    return [c for g in analysis.groups if g.prunable for c in g.consumers]


def first_pass(loaded: Loaded, analysis: Analysis, options: CompressOptions) -> FirstPass:
    """The first calibration pass of a compress run: the prunable groups' consumers, the residual landings whose
    gains it measures, the odd folds when the re-fits read them (``--independent``), and the calibration settings
    of the run (with the score maps that guide positions, unless ``--no-score-positions``)."""
    consumers = calibrated_consumers(analysis)
    guides = score_guides(loaded.model, analysis, consumers) if options.score_positions else {}
    settings = replace(options.calibration, guides=tuple(guides.items()))
    return FirstPass(loaded.model, consumers, loaded.data, loaded.calib_idx, settings,
                     folds=not options.error_correcting, landings=residual_landings(loaded.model, analysis, consumers))


def default_output(model_path: str | os.PathLike) -> Path:
    """MODEL.pruned.onnx beside the input."""
    p = Path(model_path)
    stem = p.name[:-5] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.pruned.onnx")


@dataclass
class StageLog:
    """Seconds per stage, and the peak resident memory (MiB) seen while each stage ran (VmHWM, reset at its start
    where Linux allows; else the process's peak so far). The resets reach the process's ru_maxrss too, so what
    ``/usr/bin/time`` or ``wait4`` report afterwards is the last stage's peak: the run's is the largest here."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_mib: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _stage(log: StageLog, name: str) -> Iterator[None]:
    """Time stage ``name`` into ``log`` with its peak memory; whatever unexpected escapes it is an InternalError
    naming it."""
    start = time.perf_counter()
    reset_peak_rss()
    with during(_DOING.get(name, name)):
        yield
    log.seconds[name] = log.seconds.get(name, 0.0) + time.perf_counter() - start
    peak = read_peak_rss()
    if peak is not None:
        log.peak_mib[name] = round(max(log.peak_mib.get(name, 0.0), peak / (1 << 20)), 1)


_DOING = {"load": "loading the model and data", "analyse": "analysing the graph", "profile latency": "profiling latency",
          "read statistics": "reading the statistics files", "calibrate": "calibrating", "solve": "solving",
          "error-correct": "re-fitting (error-correcting pass)", "rewrite": "rewriting the graph",
          "verify": "verifying the pruned model", "distil": "distilling toward the original's outputs",
          "output reach": "measuring each group's reach to the outputs", "save": "saving the model", "bench": "benchmarking",
          "check latency": "timing the pruned model against the original"}
# --target-latency: re-prunes after the measured check (at most; more once tries on both sides of the target bracket
# it, as the measured ratio can rise steeply with the budget: the PP-OCRv3 detector at 0.5 measured 0.221, 0.650 and
# 0.493 at budgets 0.5, 0.75 and 0.662, and in another run, its other tries missing, kept the first at 2 % of its
# multiply-adds), the measured shortfall below the target worth one (unless the noise is larger) and the least step
# between the budgets tried, and the kept share of multiply-adds below which it warns
RETRIES, BRACKETED_RETRIES = 2, 4
NEAR = 0.02
_ROUND_OFF = 1e-9   # a budget NEAR tighter than the last one is NEAR from it, whatever float subtraction gives
COLLAPSE = 0.25
FEW_SAMPLES = 32   # fewer calibration samples than this get a note in the summary
NOISY = 0.1   # noise of a measured latency ratio above which the summary says the timings cannot be trusted


@contextlib.contextmanager
def _no_progress(label: str, total: int) -> Iterator[ProgressBar]:
    class _Null:
        def update(self, n: int) -> None:
            pass
    yield _Null()


def compress(model_path: str | os.PathLike, data_path: str | os.PathLike, options: CompressOptions = CompressOptions(), *,
             output: str | os.PathLike | None = None, force: bool = False,
             progress: ProgressFactory | None = None, write_unchanged: bool = False) -> CompressResult:
    """Prune ``model_path`` with calibration data at ``data_path``; write to ``output`` when given.

    A model without any prunable channel group is written only with ``write_unchanged``.

    Raises an :class:`onnxprune.errors.OnnxPruneError` subclass on bad input; nothing is written then.
    """
    progress = progress or _no_progress
    if options.target is not None and not 0.0 < options.target.fraction <= 1.0:
        raise UsageError(f"target {options.target.fraction:g} is outside (0, 1].")
    if options.target_fidelity is not None:
        if options.target is not None:
            raise UsageError("give either --target-fidelity or a --target-flops/--target-params budget, not both.")
        if not 0.0 < options.target_fidelity <= 1.0:
            raise UsageError(f"--target-fidelity {options.target_fidelity:g} is outside (0, 1].")
        if options.holdout <= 0:
            raise UsageError("--target-fidelity needs held-out samples: use --holdout > 0.")
    if options.fidelity not in FIDELITY_KINDS:
        raise UsageError(f"--fidelity must be one of {', '.join(FIDELITY_KINDS)}, got '{options.fidelity}'.")
    if options.latency is not None and not 0.0 < options.latency.fraction <= 1.0:
        raise UsageError(f"--target-latency {options.latency.fraction:g} is outside (0, 1].")
    check_method(options.solver, any(t is not None for t in (options.target, options.target_fidelity, options.latency)))
    out_path = check_output_path(output, model_path, force=force) if output is not None else None
    if options.bench is not None and out_path is None:
        raise UsageError("benchmarking needs the pruned model on disk: give an output path.")
    if options.stats_files and options.cache_dir is not None:
        raise UsageError("give --stats or --cache, not both: --stats already replaces the first calibration pass.")
    if options.memory_budget is not None and options.memory_budget < 0:
        raise UsageError(f"--memory-budget must be at least 0 bytes, got {options.memory_budget}.")
    if options.distil.epochs < 0 or not options.distil.learning_rate > 0:
        raise UsageError("--distil needs epochs >= 0 and --distil-lr above 0.")
    with FrontierStore(options.memory_budget) as store, solver_backend.using(options.backend):
        return _compress(model_path, data_path, options, out_path, progress, write_unchanged, store)


def _cached_rankings(cache: StatsCache, first: FirstPass, key: dict, analysis: Analysis,
                     notes: list[str]) -> list[RankedGroup] | None:
    """The channel rankings an earlier run with ``cache`` made on the same statistics and settings ``key`` (any
    target), in group order, or None."""
    stored = cache.get_rankings(first, key, {g.id: g.size for g in analysis.groups})
    if stored is None:
        return None
    notes.append("no solve: channel rankings from the cache")
    return [RankedGroup(g, *stored[g.id]) for g in analysis.groups if g.id in stored]


def _compress(model_path: str | os.PathLike, data_path: str | os.PathLike, options: CompressOptions,
              out_path: Path | None, progress: ProgressFactory, write_unchanged: bool,
              store: FrontierStore) -> CompressResult:
    """The stages of :func:`compress` after its checks; ``store`` keeps the error-correcting pass's frontier."""
    log = StageLog()
    cache = StatsCache(options.cache_dir) if options.cache_dir is not None else None
    executor = options.executor or LocalExecutor()
    # the passes and rankings as tasks of a remote executor; in this process they run as they always have
    passes, since = (Passes(executor) if executor.remote else None), executor.snapshot()
    with _stage(log, "load"):
        loaded = load_inputs(model_path, data_path, options)
        options = with_chosen_batch(options, loaded)
        original, reference, model, specs, data, calib_idx, hold_idx, shapes, input_shapes = loaded
        judge = choose_judge(model, options.fidelity, shapes, input_shapes)
        outputs = judge if options.fidelity == "auto" else choose_judge(model, "auto", shapes, input_shapes)
        options = replace(options, solver=near_output_default(options.solver, outputs.kind))
        if options.latency is not None:
            options = replace(options, solver=latency_default(options.solver))
    with _stage(log, "analyse"):
        analysis = find_groups(model, shapes)
        excluded = exclude_nodes(analysis, options.exclude)
        counts = count_model(model, input_shapes)
    prunable = any(g.prunable for g in analysis.groups)
    if not prunable and not write_unchanged:
        out_path = None  # nothing to prune: write nothing unless asked
    skip = not prunable or (options.target is not None and options.target.fraction >= 1.0 and options.latency is None)
    solve_target = options.target if prunable or options.target is None else Target(options.target.kind, 1.0)
    if options.distil.epochs and not skip:
        check_distillable(model)   # before the passes: torch missing or an operator it cannot run stops here
    notes: list[str] = [f"left alone by --exclude: {', '.join(excluded)}"] if excluded else []
    if options.backend != Backend():
        notes.append(f"factorisations and Gram products ran on {options.backend.describe()} (--backend)")
    if options.augment.copies:
        notes.append(options.augment.describe(len(calib_idx) // (options.augment.copies + 1)))
    for_speed = any((options.latency is not None, options.target_fidelity is not None,
                     options.target is not None and options.target.kind == "flops"))
    allocation = options.allocation if skip else backend_counts(options.allocation, options.calibration.provider,
                                                                for_speed, notes)
    if allocation.allow_below:
        allocation = replace(allocation, whole_blocks=grouped_conv_groups(model, analysis))
    layout = None      # with shortcut convolutions: the rewrite the pruned model (and every timed copy) gets
    replaced: list[str] = []
    if not skip and backend_layout(options.shortcut_convs, options.calibration.provider, for_speed):
        rewritten, replaced = shortcut_convs(model, input_shapes)
        if replaced:
            extra = added_cost(counts, rewritten, input_shapes)
            allocation = replace(allocation, reserved=tuple(extra.items()))

            def layout(m: onnx.ModelProto) -> onnx.ModelProto:
                return shortcut_convs(m, input_shapes)[0]

            notes.append(f"{len(replaced)} channel-padding shortcut(s) (strided Slice and zero Pad) written as 1x1 "
                         "convolutions with 0/1 weights, the same values, which onnxruntime's CPU provider keeps in "
                         f"its blocked layout with the residual stream: {extra['flops'] / 1e6:.2f}M multiply-adds, "
                         "counted and kept within the target; --no-shortcut-convs keeps them as they are")

    def for_provider(m: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
        """What the pruned model (and every timed copy) becomes after the rewrite: its shortcut convolutions and
        its subnormal weights set to zero, where those apply; and how many weights were set to zero."""
        m = layout(m) if layout is not None else m
        return flush_subnormals(m) if options.flush_subnormals else (m, 0)

    timed_on = None   # with --target-latency: the provider it is profiled and checked on
    if options.latency is not None and not skip:
        timed_on = resolve_providers([options.calibration.provider])[0]
        with _stage(log, "profile latency"), progress("profiling latency", copies() * ROUNDS) as bar:
            table = measure_latency(model, analysis, timing_feeds(model, loaded, options.latency), timed_on,
                                    threads=options.latency.threads, runs=options.latency.runs,
                                    rounded=allocation.rounded, progress=bar.update,
                                    rewrite=(lambda m: for_provider(m)[0]) if layout is not None or (
                                        options.flush_subnormals and count_subnormals(model)) else None)
        allocation = replace(allocation, latency=LatencyBudget(options.latency.fraction, table))
    if (options.target is not None or options.latency is not None) and not skip:
        check_target(model, analysis, options.target, counts, allocation)
    error_correct = options.error_correcting
    first = first_pass(loaded, analysis, options)
    stats_consumers, landings = first.consumers, first.landings
    if first.settings.guides:
        notes.append(score_note(first.settings.guides))
    stats = {}
    if not skip and (options.stats_files or cache is not None):
        with _stage(log, "read statistics"):
            stats = (sum_shards(options.stats_files, first) if options.stats_files else cache.get(first)) or {}
        if stats:
            source = f"{len(options.stats_files)} --stats file(s)" if options.stats_files else "the cache"
            notes.append(f"no calibration pass: first-pass statistics from {source}")
    # the first pass keeps what the first error-correcting stage reads, when a re-fit follows in this process
    seeded = first.tensors if error_correct and not skip and not stats and passes is None else None
    with _stage(log, "calibrate"):
        if not skip and not stats:
            keep = None if seeded is None else Keep(store, first_pass_keep(model, stats_consumers, landings, seeded,
                                                                           first.settings.guides))
            with progress("calibrating", len(calib_idx)) as bar:
                partial = first.collect(progress=bar.update, passes=passes, keep=keep)
            stats = partial.total()
            if cache is not None:
                cache.put(first, partial)
            del partial  # its one node holds ``stats``: the error-correcting pass must be able to free them
    with _stage(log, "solve"):
        key = (ranking_identity(analysis, options.solver, options.backend.describe())
               if cache is not None and not skip else None)
        ranked = _cached_rankings(cache, first, key, analysis, notes) if key is not None else None
        if ranked is None:
            with progress("solving", len(analysis.groups)) as bar:
                ranked = rank_groups(model, analysis, stats, options.solver, bar.update,
                                     executor if executor.remote else None) if not skip else []
            if key is not None:
                cache.put_rankings(first, key, {r.group.id: (r.scores, r.order, r.curve) for r in ranked})
    if options.allocate_by == "outputs" and ranked and options.target is not None:
        sample = (hold_idx if len(hold_idx) >= SAMPLES else calib_idx)[:SAMPLES]
        with _stage(log, "output reach"), progress("measuring output reach", len(ranked)) as bar:
            gains = output_gains(model, analysis, ranked, stats, options.solver, data, sample,
                                 provider=options.calibration.provider, progress=bar.update)
            ranked = calibrate_curves(ranked, gains)
        notes.append(f"allocation weighs groups by their measured reach to the outputs ({len(gains)} groups cut to "
                     f"half alone, on {len(sample)} samples), not by their layer errors alone")
    means = {}   # a removed branch's last layers' no-column re-fits: their errors for the report
    if error_correct:
        means = output_means(model, analysis, stats, allocation) if ranked else {}
        stats = {}  # the error-correcting pass collects its own; free the first pass's Gram matrices
    held = data
    if input_specs(original) != specs:  # float16 inputs: read the held-out samples as the original takes them
        held = open_data(data_path, input_specs(original), image_options=options.image, num_samples=options.num_samples,
                         seed=options.calibration.seed)

    # id of each pruned model made -> what its distillation did, and how many subnormal weights it set to zero
    made: dict[int, tuple[DistilOutcome | None, int]] = {}

    def prune(target: Target | None, tuned: bool = True) -> tuple[PrunePlan, onnx.ModelProto, Fidelity | None]:
        """Allocate for ``target``, re-fit, rewrite (and distil, if ``tuned``) and measure the held-out fidelity."""
        nonlocal seeded
        with _stage(log, "solve"):
            plan = solve(model, analysis, stats, target=target, counts=counts, settings=options.solver,
                         fit_consumers=not error_correct, allocation=allocation, ranked=ranked)
        if error_correct and not plan.kept.all():
            plan.refits.update((c.node, means[c.node]) for c in bypassed(analysis, plan.kept))
            with _stage(log, "error-correct"):
                with progress("re-fitting", len(stats_consumers)) as bar:
                    plan.refits = sequential_refit(model, analysis, plan, stats_consumers, data, calib_idx,
                                                   first.settings, options.solver, bar.update, landings,
                                                   passes=passes, store=store, seeded=seeded)
                seeded = None  # the first pass's frontier is spent: a later call starts from the input
                errors = refit_errors(plan.refits, analysis)
                for g in plan.groups:
                    if g.id in errors and g.after < g.before:
                        g.error = errors[g.id]
        return (plan, *rewrite(plan, tuned))

    def rewrite(plan: PrunePlan, tuned: bool) -> tuple[onnx.ModelProto, Fidelity | None]:
        """The pruned model of ``plan`` (distilled with ``--distil`` if ``tuned``) and its held-out fidelity."""
        with _stage(log, "rewrite"):
            pruned = apply_plan(model, analysis, plan)
        outcome = None
        if tuned and options.distil.epochs and not plan.kept.all():
            with _stage(log, "distil"), progress("distilling", options.distil.epochs * len(calib_idx)) as bar:
                pruned, outcome = distil(model, pruned, data, calib_idx, hold_idx, options.distil,
                                         provider=options.calibration.provider, progress=bar.update)
        pruned, zeroed = for_provider(restore_float16(pruned, reference))
        made[id(pruned)] = (outcome, zeroed)   # also (None, 0): a later model may take a freed candidate's id
        with _stage(log, "verify"):
            check_pruned(original, pruned)
            fidelity = measure_fidelity(original, pruned, held, hold_idx, batch_size=options.calibration.batch_size,
                                        provider=options.calibration.provider, judge=judge)
        return pruned, fidelity

    check: LatencyCheck | None = None   # the measured --target-latency check of the pruning kept
    if options.target_fidelity is None or skip:
        # a --target-latency run may prune again after its measured check: distil only the pruning it keeps
        plan, pruned, fidelity = prune(solve_target, tuned=timed_on is None)
        if timed_on is not None and not plan.kept.all():
            feeds = timing_feeds(original, loaded, options.latency)   # the original's own input types

            def measure(pruned_model: onnx.ModelProto) -> LatencyCheck:
                with _stage(log, "check latency"):
                    return check_latency(original, pruned_model, feeds, timed_on, threads=options.latency.threads,
                                         runs=options.latency.runs)

            def prune_at(budget: float) -> tuple[PrunePlan, onnx.ModelProto, Fidelity | None]:
                nonlocal allocation
                allocation = replace(allocation, latency=LatencyBudget(budget, allocation.latency.table))
                return prune(solve_target, tuned=False)

            floor = minimum_fraction(model, analysis, "latency", counts, allocation)
            budget, check, (plan, pruned, fidelity) = meet_measured_latency(
                (plan, pruned, fidelity), allocation.latency.fraction, options.latency.fraction, floor, measure,
                prune_at, notes)
            allocation = replace(allocation, latency=LatencyBudget(budget, allocation.latency.table))
            if options.distil.epochs:
                pruned, fidelity = rewrite(plan, tuned=True)
    else:
        floor = minimum_fraction(model, analysis, "flops", counts, allocation)
        fraction, (plan, pruned, fidelity) = search_budget(
            lambda f: prune(Target("flops", f)), lambda result: _headline(result[2]) >= options.target_fidelity,
            floor)
        notes.append(f"--target-fidelity {options.target_fidelity:g}: searched the FLOPs budget down to "
                     f"{fraction:.3f} of the original ({_headline_text(fidelity)} measured on the held-out samples)")
    outcome, zeroed = made.get(id(pruned), (None, 0))
    if outcome is not None:   # a --target-fidelity search distils every candidate: the kept one's
        notes.append(outcome.describe())
    if zeroed:
        notes.append(f"{zeroed} subnormal weight(s) (below 1.2e-38) set to zero: the same outputs, and "
                     "onnxruntime's CPU kernels run them many times slower; --keep-subnormals keeps them")
    if error_correct and not plan.kept.all():
        notes.append(f"error-correcting re-fit in {len(consumer_stages(model, stats_consumers))} stages")
    after = count_model(pruned, input_shapes)
    latency = None
    if allocation.latency is not None:
        latency = predicted_latency(model, analysis, counts, plan, allocation.latency, options.latency.fraction,
                                    check)
        if (warning := collapse_warning(model, analysis, counts, after.flops / counts.flops, allocation, latency,
                                        fidelity)):
            notes.append(warning)
            warnings.warn(warning, OnnxPruneWarning, stacklevel=2)
    size_after = None
    if out_path is not None:
        with _stage(log, "save"):
            save_model(pruned, out_path)
            size_after = _file_size(out_path)
    bench = None
    if options.bench is not None and out_path is not None:
        written = (out_path, out_path.with_name(out_path.name + ".data"))
        with _stage(log, "bench"), removed_on_error(*written):
            with progress("benchmarking", 2 * len(options.bench.batches)) as bar:
                bench = compare_models(model_path, out_path, provider=options.calibration.provider,
                                       settings=options.bench, progress=lambda _line: bar.update(1),
                                       shapes=input_shapes)   # dynamic dims at the calibration data's size
    report = PruneReport(
        model=str(model_path), output=None if out_path is None else str(out_path), target=options.target,
        method=options.solver.method, params=(counts.params, after.params), flops=(counts.flops, after.flops),
        file_size=(_file_size(Path(model_path)), size_after), groups=plan.groups, fidelity=fidelity,
        timings=log.seconds, calibration_samples=len(calib_idx), held_out_samples=len(hold_idx),
        flops_in_blocks=_in_blocks(allocation, options.calibration.provider, counts, after),
        calibration_batch=calibration_batch(model, options.calibration), blocked=analysis.blocked, notes=notes,
        bench=bench, latency=latency, input_shapes=input_shapes, executor=executor.report(since),
        memory={"peak_mib": max(log.peak_mib.values(), default=None), "peak_rss_mib": dict(log.peak_mib),
                "frontier": store.report()},
    )
    report.shortcut_convs = replaced
    report.subnormals_flushed = zeroed
    shifted = sorted(n for n, fit in plan.refits.items() if fit.shift_passes)
    if shifted:
        report.activation_refit = {"passes": options.solver.activation_passes, "layers": shifted}
        report.notes.append(f"{len(shifted)} layer(s) re-fitted to what the ReLU or Clip after them lets through "
                            f"({options.solver.activation_passes} shift pass(es) per stage; --activation-passes 0 "
                            "fits them by plain least squares)")
    if not prunable:
        report.notes.append("no prunable channel group: every group is frozen (see -v or 'onnxprune analyze').")
    if len(calib_idx) < FEW_SAMPLES:
        report.notes.append(f"only {len(calib_idx)} calibration sample(s): the rankings, the allocation and the re-fits "
                            "rest on little data (a few hundred samples are usual)")
    return CompressResult(pruned, report, plan, analysis)


def _in_blocks(allocation: AllocationSettings, provider: str, before: ModelCounts,
               after: ModelCounts) -> tuple[int, int, int] | None:
    """(block, before, after) multiply-adds in the CPU's channel blocks on the CPU provider where the counts are a
    block's (:func:`backend_counts`, or --round-to with --allow-below), else None."""
    if provider != "cpu" or not allocation.allow_below or (allocation.round_to or 1) < 2:
        return None
    return allocation.round_to, block_flops(before, allocation.round_to), block_flops(after, allocation.round_to)


def backend_layout(wanted: bool | None, provider: str, for_speed: bool) -> bool:
    """Whether channel-padding shortcuts become 1x1 convolutions (``rewrite/layout.py``): as ``wanted``, or by
    default (None) where the counts are the CPU's too (:func:`backend_counts`): on the CPU provider of a machine
    whose convolutions run in channel blocks, for a run that cuts multiply-adds or latency."""
    if wanted is not None:
        return wanted
    return provider == "cpu" and for_speed and cpu_channel_block() > 1


def backend_counts(allocation: AllocationSettings, provider: str, for_speed: bool,
                   notes: list[str]) -> AllocationSettings:
    """Resolve ``round_to=None`` (the default): on the CPU provider, for a run that cuts multiply-adds or latency
    (``for_speed``: --target-flops, --target-latency, --target-fidelity), the counts onnxruntime's NCHWc convolutions
    run fastest (multiples of the CPU's channel block, or fewer than one block, which they read without padding,
    except before a depthwise convolution (:func:`plan.grouped_conv_groups`); other counts are padded or fall back
    to slower kernels); exact counts otherwise. Says so in ``notes``."""
    if allocation.round_to is not None:
        return allocation
    if provider != "cpu" or not for_speed or (block := cpu_channel_block()) == 1:
        return replace(allocation, round_to=1)
    notes.append(f"counts for onnxruntime's CPU convolutions: kept counts are multiples of {block} or fewer than "
                 f"{block}, except before a depthwise convolution (the NCHWc channel block on this CPU; other counts are "
                 "padded to it or fall back to slower kernels); --round-to 1 keeps exact counts")
    return replace(allocation, round_to=block, allow_below=True)


def timing_feeds(model: onnx.ModelProto, loaded: Loaded, target: LatencyTarget) -> dict[str, np.ndarray]:
    """One batch of ``target.batch`` calibration samples, as --target-latency profiles and checks the models."""
    samples = loaded.data.load([int(i) for i in loaded.calib_idx[:target.batch]])
    return feeds_for_batch(samples, bench_input_specs(model), target.batch)


def meet_measured_latency(first: tuple, budget: float, wanted: float, floor: float,
                          measure: Callable[[onnx.ModelProto], LatencyCheck], prune_at: Callable[[float], tuple],
                          notes: list[str]) -> tuple[float, LatencyCheck, tuple]:
    """Time the pruning ``first`` (made at the predicted latency ``budget``) and prune again at other budgets
    (:func:`next_budget`, at most ``RETRIES`` times, ``BRACKETED_RETRIES`` once a try met ``wanted`` and another
    missed it, never below ``floor``) while the measured ratio misses ``wanted`` by more than its noise, or meets it
    by more than the noise and ``NEAR``; returns (budget, check, pruning) of the least pruned try that met it, else
    of the fastest, and says what was tried in ``notes``."""
    tried: list[tuple[float, LatencyCheck, tuple]] = []
    result = first
    while True:
        check = measure(result[1])
        tried.append((budget, check, result))
        meets = check.ratio <= wanted + check.noise
        following = next_budget([(b, c.ratio) for b, c, _ in tried], wanted)
        if not meets:   # a miss beyond the noise, however small, is worth a try at least NEAR tighter
            following = min(following, budget - NEAR)
        bracketed = len({c.ratio <= wanted + c.noise for _, c, _ in tried}) == 2
        if (len(tried) > (BRACKETED_RETRIES if bracketed else RETRIES)
                or (meets and check.ratio >= wanted - max(check.noise, NEAR))
                or not floor <= following <= 1.0
                or any(abs(following - b) < NEAR - _ROUND_OFF for b, _, _ in tried)):
            break
        budget, result = following, prune_at(following)
    meeting = [t for t in tried if t[1].ratio <= wanted + t[1].noise]
    kept = max(meeting, key=lambda t: t[0]) if meeting else min(tried, key=lambda t: t[1].ratio)
    steps = ", ".join(f"{b:.3f} -> {c.ratio:.3f} ± {c.noise:.3f}" for b, c, _ in tried)
    if not meeting:
        notes.append(f"--target-latency {wanted:g} missed: the original's latency measured after each pruning "
                     f"(predicted budget -> measured ratio): {steps}; kept the fastest")
    elif len(tried) > 1:
        notes.append(f"--target-latency {wanted:g}: the original's latency measured after each pruning "
                     f"(predicted budget -> measured ratio): {steps}; kept the one at {kept[0]:.3f}")
    if kept[1].noise > NOISY:
        notes.append(f"--target-latency {wanted:g}: the timings were too noisy to trust (the kept pruning measured "
                     f"{kept[1].ratio:.3f} ± {kept[1].noise:.3f} of the original's latency; a try within the noise "
                     f"of the target counts as meeting it): time it on a quiet machine with 'onnxprune bench' or "
                     f"compress again with nothing else running")
    return kept


def next_budget(tried: list[tuple[float, float]], wanted: float) -> float:
    """The latency budget to try next for a measured ratio of ``wanted``, from the (budget, measured ratio) pairs
    so far: interpolated between the closest budgets measured on either side of it, else the last budget scaled
    by how far its measurement missed (when loosening, at most half-way to keeping everything)."""
    below = [t for t in tried if t[1] <= wanted]
    above = [t for t in tried if t[1] > wanted]
    if below and above:
        (b0, r0), (b1, r1) = max(below), min(above)
        if r1 > r0 and b1 > b0:
            return b0 + (wanted - r0) / (r1 - r0) * (b1 - b0)
    budget, ratio = tried[-1]
    scaled = budget * wanted / ratio
    return scaled if scaled <= budget else min(scaled, 0.5 * (budget + 1.0))   # loosen at most half-way to 1


def predicted_latency(model: onnx.ModelProto, analysis: Analysis, counts, plan: PrunePlan, budget: LatencyBudget,
                      target: float, check: LatencyCheck | None) -> dict:
    """--target-latency in the report: the target, the budget the allocation last met, the original's and the
    pruned model's predicted ms per run (kernels and session overhead) and, when checked, the measured ones."""
    table = budget.table
    cost = LatencyCost(model, analysis, counts, table)
    predicted = cost.evaluate(plan.kept)
    facts = {"target": target, "budget": round(budget.fraction, 4), "provider": table.provider, "batch": table.batch,
             "original_ms": round(cost.before, 4), "overhead_ms": round(table.overhead, 4),
             "predicted_ms": round(predicted, 4), "predicted_ratio": round(predicted / cost.before, 4)}
    if check is not None:
        facts.update(measured_original_ms=round(check.original_ms, 4), measured_ms=round(check.pruned_ms, 4),
                     measured_ratio=round(check.ratio, 4), measured_noise=round(check.noise, 4))
    return facts


def collapse_warning(model: onnx.ModelProto, analysis: Analysis, counts, kept: float,
                     allocation: AllocationSettings, latency: dict, fidelity: Fidelity | None) -> str | None:
    """A warning when --target-latency kept under ``COLLAPSE`` of the multiply-adds (``kept``, a share): what it
    cost, what pruning cannot remove at this batch, and the latency predicted at half the channels instead."""
    if kept >= COLLAPSE:
        return None
    floor = minimum_fraction(model, analysis, "latency", counts, allocation)
    half = LatencyCost(model, analysis, counts, allocation.latency.table).evaluate(
        uniform_mask(analysis, 0.5, allocation.rounded))
    lost = ("no held-out samples to say what it costs" if fidelity is None else
            f"{_headline_text(fidelity)} on the held-out samples {fidelity.headline:.1%}")
    return (f"--target-latency {latency['target']:g} at batch {latency['batch']} kept only {kept:.1%} of the "
            f"multiply-adds ({lost}): at this batch pruning reaches at best {floor:.3f} of the original's latency "
            f"(session overhead and what pruning cannot thin stay), and half the channels of every group is "
            f"predicted at {half / latency['original_ms']:.3f}; a target near that keeps more of the model"
            + (", and so may a larger --latency-batch" if latency["batch"] == 1 else ""))


def _headline(fidelity: Fidelity | None) -> float:
    """What --target-fidelity holds: the held-out ``Fidelity.headline`` of the judged output's kind (top-1
    agreement, identical decoded sequences, IoU or pixel agreement, box F1; else 1 − relative error)."""
    if fidelity is None:
        raise UsageError("--target-fidelity needs held-out samples: use --holdout > 0.")
    return fidelity.headline


def _headline_text(fidelity: Fidelity | None) -> str:
    if fidelity is None or fidelity.headline_value is None:
        return "1 - relative output error"
    return HEADLINE_LABELS.get(fidelity.headline_name, fidelity.headline_name)


def _file_size(path: Path) -> int:
    """Size of an .onnx file plus the external data files it references."""
    total = path.stat().st_size
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return total
    seen = set()
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                f = path.parent / entry.value
                if f.exists():
                    total += f.stat().st_size
    return total
