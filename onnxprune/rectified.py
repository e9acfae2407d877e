"""Re-fits of what a ReLU or Clip after a layer lets through (README "How it works" 6).

A consumer whose pre-activation (its own output, or the residual sum it writes into) is read by one ReLU, or one
Clip with constant bounds, directly or through per-channel affine maps (a BatchNormalization, a Mul or Add of
per-channel constants, as paddle2onnx writes them), needs its output only as far as the activation passes it on:
where the original pre-activation lies at or below the lower bound, every output at or below it gives the same
activation. Plain least squares spends the re-fit on reproducing values the activation discards. Each *shift pass*
re-runs the stage and replaces the targets the original clipped by the re-fitted output ŷ where ŷ stays on the
clipped side, and by the bound where ŷ crosses it: t' = min(ŷ, lo) below, max(ŷ, hi) above, t elsewhere (through
affine maps a·y + b, the same in what the activation reads, mapped back: t' = (min(aŷ + b, lo) − b)/a). The re-fit
on t' is one majorise–minimise step of Σ_inside (ŷ − t)² + Σ_below (ŷ − lo)₊² + Σ_above (hi − ŷ)₊², so the loss of
what the activation passes falls with every pass. The Gram matrix does not change; a pass adds only Σ x·(t' − t)ᵀ and
the target sums to the consumer's statistics, and the re-fit keeps the ridge it validated on the plain targets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Consumer
from onnxprune.residual import Landing, channel_affine, flat_bounds, per_channel, scalar_constants, tensor_readers
from onnxprune.solvers.statistics import LinearStatistics


_AFFINE_CHAIN = 4   # per-channel affine nodes looked through between a Conv and its activation


@dataclass(frozen=True)
class Activation:
    """The tensor a consumer's target lies in, and the bounds outside which the activation is flat; with ``scale``
    and ``shift`` (per channel) the activation reads scale·tensor + shift (the affine maps between a Conv and it)."""

    tensor: str
    low: float
    high: float
    scale: np.ndarray | None = field(default=None, compare=False)
    shift: np.ndarray | None = field(default=None, compare=False)

    def pre_activation(self, values: np.ndarray, channels_last: bool = False) -> np.ndarray:
        """What the activation reads, from the tensor's ``values`` (N, C, ...), or rows (..., C) ``channels_last``."""
        if self.scale is None:
            return values
        if channels_last:
            return values * self.scale.astype(values.dtype) + self.shift.astype(values.dtype)
        return values * per_channel(self.scale, values) + per_channel(self.shift, values)


def rectified_consumers(model: onnx.ModelProto, consumers: Sequence[Consumer],
                        landings: Mapping[str, Landing]) -> dict[str, Activation]:
    """Consumers whose pre-activation — their output, or the sum of the residual landing in ``landings`` (without
    a BatchNormalization between) — is not a graph output and is read by one Relu, or one Clip whose bounds are
    constants, by node name. A Conv's output may reach it through up to ``_AFFINE_CHAIN``
    per-channel affine nodes (:func:`~onnxprune.residual.channel_affine`) that only it reads."""
    readers = tensor_readers(model)
    outputs = {o.name for o in model.graph.output}
    scalars = scalar_constants(model)
    constants = {i.name: i for i in model.graph.initializer}
    found = {}
    for c in consumers:
        landing = landings.get(c.node)
        if landing is not None and landing.scale is not None:
            continue
        tensor = landing.total if landing is not None else c.output
        affine = None
        if landing is None and c.op == "Conv" and c.weight in constants:
            dims = tuple(constants[c.weight].dims)
            tensor, affine = _through_affine(tensor, (1, dims[0]) + (1,) * (len(dims) - 2), readers, outputs, constants)
        read = readers.get(tensor, [])
        if tensor in outputs or len(read) != 1:
            continue
        bounds = flat_bounds(read[0], scalars)
        if bounds is not None and bounds[0] < bounds[1]:   # both constant (not NaN), not a point
            found[c.node] = Activation(c.output, *bounds, *affine) if affine else Activation(tensor, *bounds)
    return found


def _through_affine(tensor: str, shape: tuple[int, ...], readers: Mapping[str, list], outputs: set[str],
                    constants: Mapping[str, onnx.TensorProto]) -> tuple[str, tuple[np.ndarray, np.ndarray] | None]:
    """The tensor the chain of per-channel affine nodes from ``tensor`` (each its only reader) ends in, and the
    composed (scale, shift), None when there is no such node."""
    affine = None
    for _ in range(_AFFINE_CHAIN):
        read = readers.get(tensor, [])
        if tensor in outputs or len(read) != 1:
            break
        step = channel_affine(read[0], tensor, shape, constants)
        if step is None:
            break
        affine = step if affine is None else (affine[0] * step[0], affine[1] * step[0] + step[1])
        tensor = read[0].output[0]
    return tensor, affine


@dataclass(frozen=True)
class TargetShift:
    """A shift pass's view of one consumer: its activation, the latest re-fit (coef (M, p), intercept (M,); float32
    gives float32 shifts) and whether its target is a landing's (the sum minus the other branch: its bounds move with
    that branch)."""

    activation: Activation
    coef: np.ndarray
    intercept: np.ndarray
    landing: bool

    def shifts(self, X: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(targets t, shifts t' − t, float32) of rows X (..., p) and ``rows`` (..., 2M): the targets, then the
        values of the activation's tensor at the same positions (the pre-activation; for a landing the original
        sum, which the target is offset from by minus the other branch). Only the sampled rows are looked at, not
        the maps they were drawn from."""
        m = self.coef.shape[0]
        Y, values = rows[..., :m], rows[..., m:]
        act = self.activation
        read = act.pre_activation(values, channels_last=True)   # what the activation reads in the original
        offset = Y - values if self.landing else np.float32(0.0)
        # one product over all rows (a stacked (N, P, p) product runs N small ones, 2-5x slower on wide layers)
        fitted = X.reshape(-1, X.shape[-1]) @ self.coef.T
        fitted = act.pre_activation(fitted.reshape(Y.shape) + self.intercept, channels_last=True)   # what it reads
        below = read <= act.low
        moved = np.where(below, np.minimum(fitted, act.low + offset), fitted)
        shifted = below
        if np.isfinite(act.high):
            above = read >= act.high
            moved = np.where(above, np.maximum(fitted, act.high + offset), moved)
            shifted = below | above
        if act.scale is not None:   # back through the affine maps
            moved = (moved - act.shift.astype(moved.dtype)) / act.scale.astype(moved.dtype)
        D = np.where(shifted, moved - Y, np.float32(0.0))
        return Y, D.astype(np.float32, copy=False)


class ShiftSums:
    """What a shift pass adds to a consumer's raw sums: Σ x·dᵀ, Σ d and Σ (2t + d)·d over its rows (d = t' − t).
    Merged and flushed like :class:`~onnxprune.calibration.collect.ConsumerStats` in the pass's block tree."""

    def __init__(self, n_features: int, n_targets: int):
        self.cross = np.zeros((n_features, n_targets))
        self.shift = np.zeros(n_targets)
        self.square = 0.0

    def add(self, X: np.ndarray, Y: np.ndarray, D: np.ndarray) -> None:
        """Rows X (..., p), targets Y and shifts D (..., M)."""
        X, Y, D = X.reshape(-1, X.shape[-1]), Y.reshape(-1, Y.shape[-1]), D.reshape(-1, D.shape[-1])
        self.cross += X.T @ D
        self.shift += D.sum(axis=0, dtype=np.float64)
        self.square += float(np.einsum("ij,ij->", 2.0 * Y + D, D, dtype=np.float64))

    def merge(self, other: "ShiftSums") -> "ShiftSums":
        """Add a later run of blocks' sums in place; returns self."""
        self.cross += other.cross
        self.shift += other.shift
        self.square += other.square
        return self

    def flush(self) -> "ShiftSums":
        """Nothing is buffered: self."""
        return self

    def park(self) -> None:
        """Nothing to park: the sums are as small as the consumer's weights."""

    def shifted(self, sums: LinearStatistics, use_up: bool = False) -> LinearStatistics:
        """The raw ``sums`` (dense, as a pass leaves them) with the targets shifted: changed in place with
        ``use_up``, else a copy."""
        out = sums if use_up else LinearStatistics.from_arrays(sums.to_arrays())
        out.cross_ += self.cross
        out.sum_y_ += self.shift
        out.sum_sq_y_ += self.square
        return out
