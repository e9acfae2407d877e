"""Stream calibration data through ONNX Runtime and accumulate each consumer's regression statistics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Consumer
from onnxprune.calibration.patches import conv_geometry, transposed_as_conv, unfold
from onnxprune.calibration.sources import CalibrationData
from onnxprune.errors import DataError
from onnxprune.graph.probe import add_outputs
from onnxprune.runtime import create_session, fixed_batch
from onnxprune.solvers.statistics import LinearStatistics


@dataclass(frozen=True)
class CalibrationSettings:
    """How calibration runs: batch size (samples), positions kept per sample, seed, execution provider."""

    batch_size: int = 32
    max_positions: int | None = 256
    seed: int = 0
    provider: str = "cpu"


class ConsumerStats:
    """A consumer's statistics over all calibration samples, and over the odd-numbered ones when the
    layer sees few rows per column (so the re-fit's ridge can be cross-validated on two folds).

    Rows are buffered and added in blocks of at least ``2p`` rows: one large Gram update is much
    cheaper than many small ones when a layer contributes few rows per batch (a Gemm after Flatten).
    """

    def __init__(self, n_features: int, n_targets: int, folds: bool):
        self.full = LinearStatistics(n_features, n_targets)
        self.odd = LinearStatistics(n_features, n_targets) if folds else None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._rows = 0
        self._block = max(2 * n_features, 4096)

    def add(self, X: np.ndarray, Y: np.ndarray, odd: np.ndarray) -> None:
        """Add per-sample rows X (N, P, p), Y (N, P, M); ``odd`` marks the samples of the second fold."""
        self._pending.append((X, Y, odd))
        self._rows += X.shape[0] * X.shape[1]
        if self._rows >= self._block:
            self.flush()

    def flush(self) -> "ConsumerStats":
        if not self._pending:
            return self
        p, m = self.full.n_features, self.full.n_targets
        X = np.concatenate([x.reshape(-1, p) for x, _, _ in self._pending])
        Y = np.concatenate([y.reshape(-1, m) for _, y, _ in self._pending])
        self.full.partial_fit(X, Y)
        if self.odd is not None:
            Xo = [x[o].reshape(-1, p) for x, _, o in self._pending if o.any()]
            if Xo:
                self.odd.partial_fit(np.concatenate(Xo),
                                     np.concatenate([y[o].reshape(-1, m) for _, y, o in self._pending if o.any()]))
        self._pending, self._rows = [], 0
        return self

    def folds(self):
        """(even, odd) centred statistics, or None when no fold was kept."""
        self.flush()
        if self.odd is None or self.odd.n_samples_seen_ in (0, self.full.n_samples_seen_):
            return None
        return (self.full - self.odd).centred(), self.odd.centred()

    @classmethod
    def for_rows(cls, X: np.ndarray, Y: np.ndarray, n_samples: int) -> "ConsumerStats":
        """Accumulators sized for rows like X (N, P, p), Y (N, P, M), with folds when n_samples such
        rows are few (n_samples = 0: never)."""
        p, m = X.shape[-1], Y.shape[-1]
        return cls(p, m, folds=0 < X.shape[1] * n_samples < FOLD_ROWS_PER_COLUMN * p)


FOLD_ROWS_PER_COLUMN = 20


def consumer_rows(node: onnx.NodeProto, consumer: Consumer, x: np.ndarray, y: np.ndarray, weight_shape: tuple[int, ...],
                  rng: np.random.Generator, max_positions: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Regression rows of one batch, per sample: (N, P, p) unfolded input patches and (N, P, M) outputs."""
    if consumer.op in ("Conv", "ConvTranspose"):
        kernel = tuple(weight_shape[2:])
        if consumer.op == "ConvTranspose":
            x, pads, strides, dilations = transposed_as_conv(node, x, kernel)
        else:
            pads, strides, dilations = conv_geometry(node, x.shape, kernel)
        xs = unfold(x, kernel, pads, strides, dilations)              # (N, P, p)
        ys = y.reshape(y.shape[0], y.shape[1], -1).transpose(0, 2, 1)  # (N, P, M)
    else:
        k, m = x.shape[-1], y.shape[-1]
        xs = x.reshape(x.shape[0], -1, k)
        ys = y.reshape(y.shape[0], -1, m)
    n, positions = xs.shape[0], xs.shape[1]
    if max_positions is not None and positions > max_positions:
        pick = np.argsort(rng.random((n, positions)), axis=1)[:, :max_positions]
        xs = np.take_along_axis(xs, pick[:, :, None], axis=1)
        ys = np.take_along_axis(ys, pick[:, :, None], axis=1)
    return xs, ys


def collect_statistics(model: onnx.ModelProto, consumers: Sequence[Consumer], data: CalibrationData,
                       indices: Iterable[int], settings: CalibrationSettings = CalibrationSettings(),
                       progress: Callable[[int], None] | None = None, folds: bool = True,
                       inputs_model: onnx.ModelProto | None = None) -> dict[str, ConsumerStats]:
    """One pass over ``indices`` of ``data``; returns float64 sufficient statistics per consumer node name.

    Targets Y are the consumers' outputs in ``model``; inputs X come from ``inputs_model`` when given
    (the network as pruned so far, for error-correcting statistics), else from ``model`` too.
    ``folds`` keeps a second accumulator over the odd samples of layers with few rows per column
    (for cross-validating their re-fit); without it only the totals are kept.

    Only the statistics are kept: each batch's activations are unfolded, subsampled (a seeded random
    subset of ``max_positions`` positions per sample) and discarded.
    """
    if not consumers:
        return {}
    nodes = {n.name: n for n in model.graph.node}
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    inputs = list(dict.fromkeys(c.input for c in consumers))
    outputs = list(dict.fromkeys(c.output for c in consumers))
    if inputs_model is None:
        names = list(dict.fromkeys(inputs + outputs))
        sessions = [(create_session(add_outputs(model, names), settings.provider), names)]
    else:
        sessions = [(create_session(add_outputs(model, outputs), settings.provider), outputs),
                    (create_session(add_outputs(inputs_model, inputs), settings.provider), inputs)]
    batch = fixed_batch(model) or settings.batch_size
    rng = np.random.default_rng(settings.seed)
    indices = list(indices)
    stats: dict[str, ConsumerStats] = {}
    for idx, feed in data.batches(indices, batch):
        values = {}
        for session, names in sessions:
            values.update(zip(names, session.run(names, feed)))
        odd = np.asarray(idx) % 2 == 1
        for cons in consumers:
            x, y = values[cons.input], values[cons.output]
            X, Y = consumer_rows(nodes[cons.node], cons, x, y, weights[cons.weight], rng, settings.max_positions)
            if not (np.isfinite(X).all() and np.isfinite(Y).all()):
                raise DataError(f"the model produces non-finite values at '{cons.node}' on the calibration data.",
                                note="check the preprocessing (--mean/--std, --raw-pixels)")
            if cons.node not in stats:
                stats[cons.node] = ConsumerStats.for_rows(X, Y, len(indices) if folds else 0)
            stats[cons.node].add(X, Y, odd)
        if progress:
            progress(len(idx))
    return {k: v.flush() for k, v in stats.items()}
