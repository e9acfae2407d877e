"""Stream calibration data through ONNX Runtime and accumulate each consumer's regression statistics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Analysis, Consumer
from onnxprune.calibration.patches import conv_geometry, unfold
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


@dataclass
class ConsumerStats:
    """A consumer's statistics over all calibration samples, and over the odd-numbered ones when the
    layer sees few rows per column (so the re-fit's ridge can be cross-validated on two folds)."""

    full: LinearStatistics
    odd: LinearStatistics | None = None

    def folds(self):
        """(even, odd) centred statistics, or None when no fold was kept."""
        if self.odd is None or self.odd.n_samples_seen_ in (0, self.full.n_samples_seen_):
            return None
        full, odd = self.full.to_arrays(), self.odd.to_arrays()
        even = LinearStatistics.from_arrays({k: full[k] - odd[k] for k in full})
        return even.centred(), self.odd.centred()

    def merge(self, other: "ConsumerStats") -> "ConsumerStats":
        self.full.merge(other.full)
        if self.odd is not None and other.odd is not None:
            self.odd.merge(other.odd)
        else:
            self.odd = None
        return self


FOLD_ROWS_PER_COLUMN = 20


def consumer_rows(node: onnx.NodeProto, consumer: Consumer, x: np.ndarray, y: np.ndarray, weight_shape: tuple[int, ...],
                  rng: np.random.Generator, max_positions: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Regression rows of one batch, per sample: (N, P, p) unfolded input patches and (N, P, M) outputs."""
    if consumer.op == "Conv":
        kernel = tuple(weight_shape[2:])
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


def collect_statistics(model: onnx.ModelProto, analysis: Analysis, consumers: Sequence[Consumer], data: CalibrationData,
                       indices: Iterable[int], settings: CalibrationSettings = CalibrationSettings(),
                       progress: Callable[[int], None] | None = None) -> dict[str, ConsumerStats]:
    """One pass over ``indices`` of ``data``; returns float64 sufficient statistics per consumer node name.

    Only the statistics are kept: each batch's activations are unfolded, subsampled (a seeded random
    subset of ``max_positions`` positions per sample) and discarded.
    """
    if not consumers:
        return {}
    nodes = {n.name: n for n in model.graph.node}
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    names = list(dict.fromkeys(t for c in consumers for t in (c.input, c.output)))
    session = create_session(add_outputs(model, names), settings.provider)
    batch = fixed_batch(model) or settings.batch_size
    rng = np.random.default_rng(settings.seed)
    indices = list(indices)
    stats: dict[str, ConsumerStats] = {}
    for idx, feed in data.batches(indices, batch):
        values = dict(zip(names, session.run(names, feed)))
        odd = np.asarray(idx) % 2 == 1
        for cons in consumers:
            x, y = values[cons.input], values[cons.output]
            X, Y = consumer_rows(nodes[cons.node], cons, x, y, weights[cons.weight], rng, settings.max_positions)
            if not (np.isfinite(X).all() and np.isfinite(Y).all()):
                raise DataError(f"the model produces non-finite values at '{cons.node}' on the calibration data.",
                                note="check the preprocessing (--mean/--std, --raw-pixels)")
            p, m = X.shape[-1], Y.shape[-1]
            if cons.node not in stats:
                few_rows = X.shape[1] * len(indices) < FOLD_ROWS_PER_COLUMN * p
                stats[cons.node] = ConsumerStats(LinearStatistics(p, m), LinearStatistics(p, m) if few_rows else None)
            entry = stats[cons.node]
            entry.full.partial_fit(X.reshape(-1, p), Y.reshape(-1, m))
            if entry.odd is not None and odd.any():
                entry.odd.partial_fit(X[odd].reshape(-1, p), Y[odd].reshape(-1, m))
        if progress:
            progress(len(idx))
    return stats
