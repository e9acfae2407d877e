"""Stream calibration data through ONNX Runtime and accumulate each consumer's regression statistics."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from queue import Empty, Full, Queue
from typing import TYPE_CHECKING, Callable, Collection, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import onnx

from onnxprune.analysis.model import Consumer
from onnxprune.analysis.score_heads import position_log_weights
from onnxprune.calibration.blocks import BlockLayout, PairwiseSum
from onnxprune.calibration.patches import conv_geometry, spread_input, transposed_geometry, unfold, unfold_at
from onnxprune.calibration.sources import CalibrationData
from onnxprune.errors import DataError
from onnxprune.graph.probe import probe_model
from onnxprune.metrics import COUNTED_OPS
from onnxprune.rectified import ShiftSums, TargetShift
from onnxprune.residual import Landing
from onnxprune.runtime import create_session, fixed_batch
from onnxprune.solvers.fold_curve import CURVE_FOLD_COLUMNS
from onnxprune.solvers.statistics import LinearStatistics

if TYPE_CHECKING:
    from onnxprune.calibration.frontier import FrontierStore

T = TypeVar("T")


@dataclass(frozen=True)
class CalibrationSettings:
    """How calibration runs: batch size (samples; None: :func:`choose_batch` picks it for the model and data, and
    :func:`calibration_batch` takes ``DEFAULT_BATCH`` where nothing picked it), positions kept per sample, seed,
    execution provider, and ONNX Runtime's intra-op threads (None: its default; a Ray task uses 1 per CPU it holds).
    The statistics do not depend on the thread count (onnxruntime's CPU kernels split work by output, not by
    reduction).

    ``guides`` pairs consumer node names with the score map of the original network whose scores weigh the
    positions sampled from them (``analysis/score_heads.py``); the others sample positions uniformly."""

    batch_size: int | None = None
    max_positions: int | None = 256
    seed: int = 0
    provider: str = "cpu"
    threads: int | None = None
    guides: tuple[tuple[str, str], ...] = ()


class ConsumerStats:
    """A consumer's statistics over all calibration samples, and over the odd-numbered ones when the
    layer sees few rows per column (so the re-fit's ridge can be cross-validated on two folds, and its error curve
    judged on rows it has not seen: ``solvers/fold_curve.py``).

    Rows are buffered and added in blocks of at least ``2p`` rows: one large Gram update is much
    cheaper than many small ones when a layer contributes few rows per batch (a Gemm after Flatten).
    """

    def __init__(self, n_features: int, n_targets: int, folds: bool):
        self.full = LinearStatistics(n_features, n_targets)
        self.odd = LinearStatistics(n_features, n_targets) if folds else None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._rows = 0
        self._block = max(2 * n_features, 4096)
        self.energy: np.ndarray | None = None  # [E(output), E(residual sum)] for a consumer that writes into one

    @property
    def gain(self) -> float | None:
        """E(output)/E(residual sum): how strongly this consumer's error shows in the stream it writes into."""
        if self.energy is None:
            return None
        return float(self.energy[0] / self.energy[1]) if self.energy[1] > 0 else 1.0

    def add(self, X: np.ndarray, Y: np.ndarray, odd: np.ndarray) -> None:
        """Add per-sample rows X (N, P, p), Y (N, P, M), all finite (the caller checks them: :class:`Rows`); ``odd``
        marks the samples of the second fold."""
        self._pending.append((X, Y, odd))
        self._rows += X.shape[0] * X.shape[1]
        if self._rows >= self._block:
            self.flush()

    def flush(self) -> "ConsumerStats":
        if not self._pending:
            return self
        p, m = self.full.n_features, self.full.n_targets
        # gathered straight into float64, which the sums take (one pass over the rows, not a copy and a cast)
        X = np.concatenate([x.reshape(-1, p) for x, _, _ in self._pending], dtype=np.float64)
        Y = np.concatenate([y.reshape(-1, m) for _, y, _ in self._pending], dtype=np.float64)
        self.full.add_checked(X, Y)   # every row was checked finite as it was drawn (``Rows.accumulate``)
        if self.odd is not None:
            Xo = [x[o].reshape(-1, p) for x, _, o in self._pending if o.any()]
            if Xo:
                self.odd.add_checked(np.concatenate(Xo, dtype=np.float64), np.concatenate(
                    [y[o].reshape(-1, m) for _, y, o in self._pending if o.any()], dtype=np.float64))
        self._pending, self._rows = [], 0
        return self

    def merge(self, other: "ConsumerStats") -> "ConsumerStats":
        """Add another block's statistics of the same consumer in place; returns self."""
        self.flush()
        other.flush()
        self.full.merge(other.full)
        if self.odd is not None:
            self.odd.merge(other.odd)
        if other.energy is not None:
            self.energy = other.energy.copy() if self.energy is None else self.energy + other.energy
        return self

    def park(self) -> None:
        """Park the large Gram matrices (:meth:`LinearStatistics.park`) until they are next used."""
        self.full.park()
        if self.odd is not None:
            self.odd.park()

    def folds(self, use_up: bool = False):
        """(even, odd) centred statistics, or None when no fold was kept; ``use_up`` centres the odd sums in their
        own memory (they are not used again)."""
        self.flush()
        if self.odd is None or self.odd.n_samples_seen_ in (0, self.full.n_samples_seen_):
            return None
        even = (self.full - self.odd).centred_in_place()
        return even, self.odd.centred_in_place() if use_up and self.odd.writeable else self.odd.centred()

    @classmethod
    def of(cls, full: LinearStatistics, odd: LinearStatistics | None = None) -> "ConsumerStats":
        """Statistics accumulated elsewhere (e.g. read from a file), with the odd fold when kept."""
        stats = cls(full.n_features, full.n_targets, folds=False)
        stats.full, stats.odd = full, odd
        return stats

    @classmethod
    def for_rows(cls, X: np.ndarray, Y: np.ndarray, n_samples: int,
                 max_columns: int | None = None) -> "ConsumerStats":
        """Accumulators sized for rows like X (N, P, p), Y (N, P, M), with folds when n_samples such
        rows are few (n_samples = 0: never) and p is at most ``max_columns`` (None: any p)."""
        p, m = X.shape[-1], Y.shape[-1]
        few = 0 < X.shape[1] * n_samples < FOLD_ROWS_PER_COLUMN * p
        return cls(p, m, folds=few and (max_columns is None or p <= max_columns))


FOLD_ROWS_PER_COLUMN = 20


DEFAULT_BATCH = 32          # samples per ONNX Runtime call of a pass, at most, when the batch is chosen
BATCH_BYTES = 256 << 20     # what one call may fetch then (its layers' inputs and outputs, float32)


def calibration_batch(model: onnx.ModelProto, settings: CalibrationSettings) -> int:
    """Samples per ONNX Runtime call: the model's fixed batch size, else ``settings.batch_size``, else
    ``DEFAULT_BATCH``."""
    return fixed_batch(model) or settings.batch_size or DEFAULT_BATCH


def choose_batch(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The batch size of passes that were given none: ``DEFAULT_BATCH`` samples, fewer where the tensors one call
    fetches (the input and output of every Conv, ConvTranspose, Gemm and MatMul, at ``shapes``: one sample at the
    data's resolution) would pass ``BATCH_BYTES``. Large batches of large maps run slower, not faster, and their
    peak memory grows with them: the PP-OCRv5 text detector (153 MB a sample at 480×640) calibrated in 34 s at 32
    samples a call and 10 s at 1–2, its peak 6.7 → 1.8 GB. It depends on the model and the data's shape only, so
    shards, caches and ``compress --stats`` agree on it."""
    weights = {i.name for i in model.graph.initializer}
    tensors = {t for node in model.graph.node if node.op_type in COUNTED_OPS
               for t in (node.input[0], node.output[0]) if t not in weights}
    per_sample = 4 * sum(int(np.prod(shapes[t])) for t in tensors if t in shapes)
    return max(1, min(DEFAULT_BATCH, BATCH_BYTES // max(per_sample, 1)))


def _draws(consumer: Consumer, y: np.ndarray, max_positions: int | None) -> int:
    """Random draws per sample that :func:`consumer_rows` takes for a consumer whose output is ``y``: one per
    position (regression row before subsampling) where there are more than ``max_positions``, else none."""
    channels = y.shape[1] if consumer.op in ("Conv", "ConvTranspose") else y.shape[-1]
    positions = y.size // max(y.shape[0] * channels, 1)
    return positions if max_positions is not None and positions > max_positions else 0


def consumer_rows(node: onnx.NodeProto, consumer: Consumer, x: np.ndarray, y: np.ndarray, weight_shape: tuple[int, ...],
                  rng: np.random.Generator, max_positions: int | None, log_weights: np.ndarray | None = None,
                  beside: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Regression rows of one batch, per sample: (N, P, p) unfolded input patches and (N, P, M) outputs;
    ``log_weights`` (N, P) of a Conv's output positions weigh the sampled ones (else they are drawn uniformly).
    ``beside``, a tensor shaped like ``y``, has its values at the same positions put after the outputs (N, P, 2M)."""
    if consumer.op in ("Conv", "ConvTranspose"):
        kernel = tuple(weight_shape[2:])
        spread = None
        if consumer.op == "ConvTranspose":
            pads, spread, dilations = transposed_geometry(node, kernel)
            strides = [1] * len(kernel)
        else:
            pads, strides, dilations = conv_geometry(node, x.shape, kernel)

        def as_rows(t: np.ndarray) -> np.ndarray:
            return t.reshape(t.shape[0], t.shape[1], -1).transpose(0, 2, 1)  # (N, P, M)

        ys = as_rows(y)
        pick = _sampled_positions(rng, ys.shape[0], ys.shape[1], max_positions, log_weights)
        # only the sampled patches are gathered: a large feature map unfolded whole would take gigabytes
        if pick is not None:
            xs = unfold_at(x, kernel, pads, strides, dilations, pick, spread)
        elif spread is not None:
            xs = unfold(spread_input(x, spread, pads), kernel, [0] * len(pads), strides, dilations)
        else:
            xs = unfold(x, kernel, pads, strides, dilations)
    else:
        k, m = x.shape[-1], y.shape[-1]

        def as_rows(t: np.ndarray) -> np.ndarray:
            return t.reshape(t.shape[0], -1, m)

        xs, ys = x.reshape(x.shape[0], -1, k), as_rows(y)
        pick = _sampled_positions(rng, ys.shape[0], ys.shape[1], max_positions)
        if pick is not None:
            xs = _positions(xs, pick)
    if pick is not None:
        ys = _positions(ys, pick)
    if beside is None:
        return xs, ys
    beside = as_rows(beside) if pick is None else _positions(as_rows(beside), pick)
    return xs, np.concatenate([ys, beside], axis=-1)


def _positions(rows: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """rows[n, pick[n]] for each sample n of ``rows`` (N, P, k): whole rows gathered (the same values as
    ``take_along_axis``, which gathers them entry by entry: 5–9× slower for these shapes)."""
    return rows[np.arange(rows.shape[0])[:, None], pick]


def _sampled_positions(rng: np.random.Generator, n: int, positions: int, max_positions: int | None,
                       log_weights: np.ndarray | None = None) -> np.ndarray | None:
    """A seeded random set of ``max_positions`` of each sample's positions (N, k), or None to keep them all.

    With ``log_weights`` (N, positions) it is a weighted sample without replacement (Gumbel top-k: the largest
    log-weight plus Gumbel noise), from the same draws, so the generator advances as much either way."""
    if max_positions is None or positions <= max_positions:
        return None
    draws = rng.random((n, positions))
    if log_weights is not None:
        with np.errstate(divide="ignore"):   # a draw of exactly 0 gets an infinite key: never picked
            draws = np.log(-np.log(draws)) - log_weights   # minus the Gumbel key: the smallest are picked
    # the max_positions smallest draws in increasing order: argsort's first max_positions, without sorting them all
    part = np.argpartition(draws, max_positions - 1, axis=1)[:, :max_positions]
    return np.take_along_axis(part, np.argsort(np.take_along_axis(draws, part, axis=1), axis=1), axis=1)


Partial = PairwiseSum[dict[str, ConsumerStats]]


def merge_blocks(left: dict[str, ConsumerStats], right: dict[str, ConsumerStats]) -> dict[str, ConsumerStats]:
    """Add the statistics of a later run of blocks into ``left`` (in place) and return it; ``right`` is used up,
    an entry at a time (so that a large node's sums are freed as they are added)."""
    for node in list(right):
        left[node].merge(right.pop(node))
    return left


def collect_statistics(model: onnx.ModelProto, consumers: Sequence[Consumer], data: CalibrationData,
                       indices: Iterable[int], settings: CalibrationSettings = CalibrationSettings(),
                       progress: Callable[[int], None] | None = None, folds: bool = True,
                       inputs_model: onnx.ModelProto | None = None, *,
                       landings: Mapping[str, Landing] | None = None,
                       output_masks: Mapping[str, np.ndarray] | None = None) -> dict[str, ConsumerStats]:
    """One pass over ``indices`` of ``data``; returns float64 sufficient statistics per consumer node name.

    :func:`collect_blocks` over all blocks, summed in the fixed order of ``blocks.py``.
    """
    return collect_blocks(model, consumers, data, indices, settings, progress, folds, inputs_model,
                          landings=landings, output_masks=output_masks).total()


def collect_blocks(model: onnx.ModelProto, consumers: Sequence[Consumer], data: CalibrationData,
                   indices: Iterable[int], settings: CalibrationSettings = CalibrationSettings(),
                   progress: Callable[[int], None] | None = None, folds: bool = True,
                   inputs_model: onnx.ModelProto | None = None, *, blocks: tuple[int, int] | None = None,
                   landings: Mapping[str, Landing] | None = None,
                   output_masks: Mapping[str, np.ndarray] | None = None,
                   keep: "Keep | None" = None) -> Partial:
    """The statistics of blocks [first, stop) = ``blocks`` (default: all) of the calibration split ``indices``
    of ``data`` (:class:`BlockLayout`), per consumer node name, as the tree nodes of that run of blocks.

    Targets Y are the consumers' outputs in ``model``; inputs X come from ``inputs_model`` when given
    (a pruned network, for error-correcting statistics of one stage from the input on), else from ``model`` too.
    ``folds`` keeps a second accumulator over the odd samples of every layer with few rows per column (for
    cross-validating the re-fits of ``--independent``); without it only those of at most ``CURVE_FOLD_COLUMNS``
    columns keep one (for their error curves).

    A run of blocks samples the same positions and keeps the same folds as one pass over the whole split
    (samples must have one shape, so every sample takes the same number of random draws), and its nodes
    pushed with the other runs' in block order give the one-pass sums bit for bit.

    ``landings`` names the consumers that write into a residual sum. From the original network alone,
    each one's gain E(output)/E(sum) is measured (``ConsumerStats.gain``); with ``inputs_model`` its
    target becomes the original sum minus the pruned network's other branch, on the kept output
    channels given by ``output_masks`` (the others keep the original sum; they are dropped anyway).

    ``keep`` stores, per batch, the inputs and the computed tensors it names (a :class:`Keep`), for the
    error-correcting pass to start from (``sequential.py``).

    Only the statistics are kept: each batch's activations are unfolded, subsampled (a seeded random
    subset of ``max_positions`` positions per sample) and discarded. The next batch is read and decoded while
    ONNX Runtime runs the current one.
    """
    indices = np.asarray(list(indices), dtype=np.int64)
    batch = calibration_batch(model, settings)
    layout = BlockLayout(len(indices), batch)
    first, stop = blocks or (0, layout.count)
    if not consumers or first >= stop:
        return PairwiseSum(layout.count, merge_blocks)
    landings = {c.node: landings[c.node] for c in consumers if c.node in landings} if landings else {}
    inputs, outputs = pass_tensors(consumers, landings, settings.guides)
    if inputs_model is None:
        names = list(dict.fromkeys(inputs + outputs))
        sessions = [(create_session(probe_model(model, names), settings.provider, settings.threads), names, True, True)]
    else:
        sessions = [(create_session(probe_model(model, outputs), settings.provider, settings.threads), outputs, True,
                     False),
                    (create_session(probe_model(inputs_model, inputs), settings.provider, settings.threads), inputs,
                     False, True)]
    start, end = layout.span(first, stop)

    def run() -> Iterator[tuple[np.ndarray, dict, dict]]:
        for number, (idx, feed) in enumerate(prefetched(data.batches(indices[start:end], batch)), start // batch):
            values, sources = {}, {}   # original network's tensors; inputs from the pruned network
            for session, names, original, source in sessions:
                got = dict(zip(names, session.run(names, feed)))
                if original:
                    values.update(got)
                if source:
                    sources.update(got)
            del got  # else the previous batch's outputs stay alive through the next batch's runs
            if keep is not None:
                keep.put(number, {**feed, **values})
            yield idx, values, sources

    rows = Rows(model, consumers, settings, len(indices), landings, measure_gains=inputs_model is None,
                output_masks=output_masks, fold_columns=None if folds else CURVE_FOLD_COLUMNS)
    return rows.accumulate(layout, first, stop, run(), progress)


def pass_tensors(consumers: Sequence[Consumer], landings: Mapping[str, Landing],
                 guides: Iterable[tuple[str, str]] = ()) -> tuple[list[str], list[str]]:
    """The tensors a pass reads: (the consumers' inputs and the landings' other branches, the consumers' outputs,
    the landings' sums and the score maps that ``guides`` pairs with them), each list without repeats; the
    consumers of ``landings`` are among ``consumers``."""
    guide = dict(guides)
    inputs = list(dict.fromkeys([c.input for c in consumers] + [r.other for r in landings.values()]))
    outputs = list(dict.fromkeys([c.output for c in consumers] + [r.total for r in landings.values()]
                                 + [guide[c.node] for c in consumers if c.node in guide]))
    return inputs, outputs


class Keep:
    """Tensors of the first pass kept per batch number in a :class:`FrontierStore` under ``(net, name)`` keys:
    every ``net`` of ``nets`` gets the ``names`` it lists (graph inputs included)."""

    def __init__(self, store: "FrontierStore", nets: Mapping[str, Collection[str]]):
        self.store = store
        self.nets = {net: tuple(names) for net, names in nets.items()}

    def put(self, batch: int, tensors: Mapping[str, np.ndarray]) -> None:
        self.store.set(batch, {(net, name): tensors[name] for net, names in self.nets.items() for name in names})


class Rows:
    """Turns each batch's tensors into regression rows and adds them to per-block statistics, in the one order
    of a pass (``blocks.py``): the same positions are drawn, batch by batch and consumer by consumer."""

    def __init__(self, model: onnx.ModelProto, consumers: Sequence[Consumer], settings: CalibrationSettings,
                 fold_samples: int, landings: Mapping[str, Landing], *, measure_gains: bool,
                 output_masks: Mapping[str, np.ndarray] | None, fold_columns: int | None = None,
                 shifts: Mapping[str, TargetShift] | None = None):
        self.nodes = {n.name: n for n in model.graph.node}
        self.weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
        self.consumers = consumers
        self.settings = settings
        self.fold_samples = fold_samples
        self.fold_columns = fold_columns   # the widest layer that keeps folds (None: any)
        self.landings = landings
        self.measure_gains = measure_gains
        self.output_masks = output_masks
        self.guides = dict(settings.guides)
        self.shifts = shifts   # a shift pass (``rectified.py``): only these consumers, their target shifts summed

    def accumulate(self, layout: BlockLayout, first: int, stop: int, batches: Iterator[tuple[np.ndarray, dict, dict]],
                   progress: Callable[[int], None] | None) -> Partial:
        """The tree nodes of blocks [first, stop) from ``batches`` (sample indices, the original network's tensors,
        the tensors read as inputs), which yields those blocks' batches in order."""
        settings, landings, measure_gains = self.settings, self.landings, self.measure_gains
        partial: Partial = PairwiseSum(layout.count, merge_blocks)
        rng = np.random.default_rng(settings.seed)
        offset = layout.span(first, stop)[0]
        for block in range(first, stop):
            stats: dict[str, ConsumerStats] = {}
            for _ in layout.batch_numbers(block, block + 1):
                idx, values, sources = next(batches)
                if offset:  # skip the draws of the samples before the run
                    rng.bit_generator.advance(offset * sum(_draws(c, values[c.output], settings.max_positions)
                                                           for c in self.consumers))
                offset = 0
                odd = np.asarray(idx) % 2 == 1
                log_weights: dict[str, np.ndarray] = {}   # of the positions, per score map
                for cons in self.consumers:
                    x, y = sources[cons.input], values[cons.output]
                    shift = None if self.shifts is None else self.shifts.get(cons.node)
                    if self.shifts is not None and shift is None:   # not shifted: its positions are drawn all the same
                        rng.bit_generator.advance(y.shape[0] * _draws(cons, y, settings.max_positions))
                        continue
                    landing = landings.get(cons.node)
                    if landing is not None and not measure_gains:
                        y = landing.output_for(_residual_target(values[landing.total], sources[landing.other],
                                                                self.output_masks[cons.node]))
                    guide = self.guides.get(cons.node)
                    if guide is not None and guide not in log_weights:
                        log_weights[guide] = position_log_weights(values[guide])
                    X, Y = consumer_rows(self.nodes[cons.node], cons, x, y, self.weights[cons.weight], rng,
                                         settings.max_positions, log_weights.get(guide),
                                         None if shift is None else values[shift.activation.tensor])
                    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
                        raise DataError(f"the model produces non-finite values at '{cons.node}' on the calibration "
                                        "data.", note="check the preprocessing (--mean/--std, --raw-pixels)")
                    if shift is not None:
                        stats.setdefault(cons.node, ShiftSums(X.shape[-1], shift.coef.shape[0])).add(
                            X, *shift.shifts(X, Y))
                        continue
                    if cons.node not in stats:
                        stats[cons.node] = ConsumerStats.for_rows(X, Y, self.fold_samples, self.fold_columns)
                        if landing is not None and measure_gains:
                            stats[cons.node].energy = np.zeros(2)
                    if landing is not None and measure_gains:
                        stats[cons.node].energy += (_energy(landing.branch(y)), _energy(values[landing.total]))
                    stats[cons.node].add(X, Y, odd)
                del values, sources, x, y, log_weights
                if progress:
                    progress(len(idx))
            partial.push(block, 1, {k: v.flush() for k, v in stats.items()})
            for node in partial.nodes:
                if node.size >= 2:  # it waits two blocks or more for its sibling: its large sums wait on disk
                    for entry in node.value.values():
                        entry.park()
        return partial


def prefetched(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """``items``, produced by a background thread up to ``depth`` items ahead (decoding overlaps the caller's work).

    An error of the producer is raised in the caller at the item where it happened; a caller that stops early
    stops the producer."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put((item, None), timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            queue.put((done, exc))

    thread = threading.Thread(target=produce, name="onnxprune-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                queue.get_nowait()
            except Empty:
                thread.join(0.05)


def _energy(t: np.ndarray) -> float:
    """Energy of a batch of (N, C, ...) activations about their per-channel mean."""
    flat = np.moveaxis(t, 1, 0).reshape(t.shape[1], -1).astype(np.float64)
    return float(np.sum((flat - flat.mean(axis=1, keepdims=True)) ** 2))


def _residual_target(total: np.ndarray, other: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Original sum minus the pruned network's other branch on the kept channels (the channel axis is 1)."""
    y = total.copy()
    y[:, kept] -= other
    return y
