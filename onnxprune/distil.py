"""The ``--distil`` stage: the pruned model's weights tuned so that its outputs follow the original's.

After the re-fits and the rewrite, the pruned model's Conv, ConvTranspose, Gemm and MatMul weights and biases are
trained with Adam (cosine-decayed learning rate) for a few epochs over the calibration samples, the original
model's outputs on the same samples as targets (no labels): the mean squared difference of every float output,
each output channel (axis 1) divided by its variance over the calibration samples, so that outputs of any scale
(boxes in pixels beside class scores) count alike. Where there are held-out samples, the tuned weights are kept
only if that loss went down on them; otherwise the re-fitted weights stay and the note says so. The graph is not
changed, only initializer values. Needs torch (``pip install "onnxprune[torch]"``); runs on CUDA where torch sees a
device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.calibration.frontier import default_budget
from onnxprune.calibration.sources import CalibrationData
from onnxprune.errors import UsageError
from onnxprune.runtime import create_session, fixed_batch

MAX_BATCH = 32           # samples per step, at most
SCALE_SAMPLES = 64       # calibration samples the output variances are measured on
STEP_BYTES = 2 << 30    # the tensors a step keeps for its backward pass, at most (a fixed figure: the batch, and
                        # with it the result, must not depend on the memory free at the time)
CACHE_SHARE = 0.25      # of the default memory budget (half the memory available), for the calibration samples'
                        # inputs and targets kept between epochs


@dataclass(frozen=True)
class DistilSettings:
    """``epochs`` passes over the calibration samples (0: no distillation), Adam's peak ``learning_rate``,
    ``batch_size`` samples a step (None: at most ``MAX_BATCH``, fewer where the tensors a step keeps would pass
    ``STEP_BYTES``), ``seed`` for the sample order."""

    epochs: int = 0
    learning_rate: float = 1e-4
    batch_size: int | None = None
    seed: int = 0


@dataclass
class DistilOutcome:
    """What a distillation did: its steps, batch, device, the loss on the held-out samples before and after (None
    without held-out samples) and whether the tuned weights were kept."""

    epochs: int
    steps: int
    batch_size: int
    device: str
    held_before: float | None
    held_after: float | None
    kept: bool

    def describe(self) -> str:
        """One line for the summary's notes."""
        text = (f"distilled toward the original's outputs: {self.epochs} epoch(s), {self.steps} steps of "
                f"{self.batch_size} samples on torch {self.device}")
        if self.held_before is None:
            return text + " (no held-out samples to check it on)"
        change = f"held-out output loss {self.held_before:.4g} -> {self.held_after:.4g}"
        return f"{text}, {change}" if self.kept else f"{text}; not kept: {change}"


def _torch():
    try:
        import torch
    except ImportError:
        raise UsageError("--distil needs torch, which is not installed here.",
                         note='pip install "onnxprune[torch]", or leave --distil out.') from None
    return torch


def check_distillable(model: onnx.ModelProto) -> None:
    """UsageError unless torch is installed and can run every operator of ``model``."""
    _torch()
    from onnxprune.torch_graph import unsupported

    missing = unsupported(model)
    if missing:
        raise UsageError(f"--distil cannot run {', '.join(missing)} in torch.", note="leave --distil out for this model.")


class _Loss:
    """Mean squared difference of the float outputs, each output channel scaled by its variance."""

    def __init__(self, targets: list[np.ndarray], torch, device: str):
        self.scales = [None if t.dtype.kind != "f" else torch.from_numpy(self._scale(t)).to(device) for t in targets]

    @staticmethod
    def _scale(t: np.ndarray) -> np.ndarray:
        t = t.astype(np.float64)
        if t.ndim >= 3:   # per channel (axis 1), over samples and the other axes
            var = np.moveaxis(t, 1, 0).reshape(t.shape[1], -1).var(axis=1)
            shape = (1, t.shape[1]) + (1,) * (t.ndim - 2)
        elif t.ndim == 2:
            var, shape = t.var(axis=0), (1, t.shape[1])
        else:
            var, shape = np.array([t.var()]), (1,) * max(t.ndim, 1)
        floor = max(float(var.mean()), 1e-12) * 1e-3
        return np.maximum(var, floor).reshape(shape).astype(np.float32)

    def __call__(self, outputs, targets) -> "torch.Tensor":
        terms = [((out - target) ** 2 / scale).mean()
                 for out, target, scale in zip(outputs, targets, self.scales) if scale is not None]
        return sum(terms) / len(terms)


def _per_sample_bytes(net, feeds, torch) -> int:
    """Bytes of the tensors a forward pass keeps for its backward pass, for a batch of one."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(feeds)
    return total[0]


def distil(teacher: onnx.ModelProto, student: onnx.ModelProto, data: CalibrationData, calib_idx: Sequence[int],
           hold_idx: Sequence[int], settings: DistilSettings, provider: str = "cpu",
           progress: Callable[[int], None] | None = None) -> tuple[onnx.ModelProto, DistilOutcome]:
    """``student`` (the pruned float32 model) with its weights tuned toward ``teacher``'s outputs on the samples
    ``calib_idx`` of ``data``, checked on ``hold_idx``; ``progress`` is told the samples of each step. Returns the
    model (``student`` itself where the tuned weights were not kept) and what was done."""
    check_distillable(student)
    try:
        return _distil(teacher, student, data, calib_idx, hold_idx, settings, provider, progress)
    except NotImplementedError as exc:   # an attribute combination the interpreter does not follow
        raise UsageError(f"--distil cannot run this model in torch: {exc}.",
                         note="leave --distil out for this model.") from None


def _distil(teacher: onnx.ModelProto, student: onnx.ModelProto, data: CalibrationData, calib_idx: Sequence[int],
            hold_idx: Sequence[int], settings: DistilSettings, provider: str,
            progress: Callable[[int], None] | None) -> tuple[onnx.ModelProto, DistilOutcome]:
    """:func:`distil` once its model is known to be runnable."""
    torch = _torch()
    from onnxprune.torch_graph import TorchGraph

    torch.manual_seed(settings.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    session = create_session(teacher, provider)
    names = [o.name for o in teacher.graph.output]
    net = TorchGraph(student).to(device)

    def feeds(arrays: dict[str, np.ndarray]) -> dict:
        return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}

    def tensors(outs: list[np.ndarray]) -> list:
        return [torch.from_numpy(t).to(device) for t in outs]

    def targets(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(names, arrays)

    calib_idx, hold_idx = np.asarray(calib_idx), np.asarray(hold_idx)
    fixed = fixed_batch(teacher)   # a model exported for one batch size runs at that size only
    batch = fixed or settings.batch_size or max(1, min(MAX_BATCH, len(calib_idx), int(
        STEP_BYTES // max(1, _per_sample_bytes(net, feeds(data.load(calib_idx[:1])), torch)))))

    def chunks(indices: np.ndarray) -> list[np.ndarray]:
        """Consecutive batches of ``indices``; with a fixed batch size, whole ones only."""
        parts = [indices[k:k + batch] for k in range(0, len(indices), batch)]
        return [p for p in parts if not fixed or len(p) == fixed]

    def pair(chosen: np.ndarray) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        arrays = data.load(chosen)
        return arrays, targets(arrays)

    first = chunks(calib_idx[:max(SCALE_SAMPLES, fixed or 0)])
    scaled = [pair(c) for c in first]
    loss_of = _Loss([np.concatenate(parts) for parts in zip(*(outs for _, outs in scaled))], torch, device)
    per_sample = sum(a.nbytes for arrays, outs in scaled for a in [*arrays.values(), *outs]) / sum(map(len, first))
    # the held-out samples are read twice (before and after), the calibration samples once an epoch: made once
    fits = (len(calib_idx) + len(hold_idx)) * per_sample <= CACHE_SHARE * default_budget()
    cached = _InMemory([calib_idx, hold_idx], pair, chunks) if fits else None

    def batch_of(chosen: np.ndarray) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        return cached.take(chosen) if cached is not None and cached.has(chosen) else pair(chosen)

    def held_loss() -> float | None:
        parts = chunks(hold_idx)
        if not parts:
            return None
        total = 0.0
        with torch.no_grad():
            for chosen in parts:
                arrays, outs = batch_of(chosen)
                total += float(loss_of(net(feeds(arrays)), tensors(outs))) * len(chosen)
        return total / sum(map(len, parts))

    before = held_loss()
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    per_epoch = len(chunks(calib_idx))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.epochs * per_epoch)
    order = np.random.default_rng(settings.seed)
    for _ in range(settings.epochs):
        for chosen in chunks(calib_idx[order.permutation(len(calib_idx))]):
            arrays, outs = batch_of(chosen)
            loss = loss_of(net(feeds(arrays)), tensors(outs))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if progress is not None:
                progress(len(chosen))
    after = held_loss()
    kept = before is None or after < before
    outcome = DistilOutcome(settings.epochs, settings.epochs * per_epoch, batch, device, before, after, kept)
    return (with_initializers(student, net.trained_initializers()) if kept else student), outcome


class _InMemory:
    """The inputs and the original's outputs of every sample of ``splits`` (calibration, held-out), made once and kept
    in memory (a view per sample into the batch it was made in), so that the epochs and the held-out checks neither
    decode nor run the original again."""

    def __init__(self, splits: list[np.ndarray], pair: Callable, chunks: Callable):
        self._samples: dict[int, tuple[dict[str, np.ndarray], list[np.ndarray]]] = {}
        for chosen in (c for indices in splits for c in chunks(indices)):
            arrays, outs = pair(chosen)
            if any(a.shape[:1] != (len(chosen),) for a in [*arrays.values(), *outs]):
                self._samples = {}   # an output without a batch axis: made per step instead
                return
            for k, i in enumerate(chosen):
                self._samples[int(i)] = ({name: a[k] for name, a in arrays.items()}, [o[k] for o in outs])

    def has(self, chosen: np.ndarray) -> bool:
        return all(int(i) in self._samples for i in chosen)

    def take(self, chosen: np.ndarray) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """The batch of samples ``chosen``: inputs by name and the original's outputs."""
        rows = [self._samples[int(i)] for i in chosen]
        return ({name: np.stack([r[0][name] for r in rows]) for name in rows[0][0]},
                [np.stack([r[1][k] for r in rows]) for k in range(len(rows[0][1]))])


def with_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``values`` hold those arrays instead."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name].astype(np.float32), init.name))
    return out
