"""Plain data of the channel analysis: layouts, consumers, edits and groups."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Layout:
    """The channel axis of one tensor: a label per channel position, each owning ``repeat`` consecutive elements.

    A label may sit at several positions: flattening channel-last [N,H,W,C] tiles the C labels H*W times.
    """

    axis: int
    labels: np.ndarray
    repeat: int = 1

    @property
    def size(self) -> int:
        return int(len(self.labels)) * self.repeat


@dataclass(frozen=True)
class Consumer:
    """A Conv/ConvTranspose/Gemm/MatMul whose input channels can be removed and whose weights are re-fitted."""

    node: str
    op: str
    input: str
    output: str
    weight: str
    kernel: int  # columns per input channel position in the unfolded input (kh*kw, or 1)


@dataclass(frozen=True)
class SliceInitializer:
    """Slice constant input ``input_index`` of ``node`` along ``axis`` by the kept mask of ``tensor``."""

    node: str
    input_index: int
    axis: int
    tensor: str
    repeat: int = 1


@dataclass(frozen=True)
class SetGroup:
    """A group-count attribute (a depthwise Conv's ``group``, a GroupNormalization's ``num_groups``) follows the
    kept channel count of ``tensor`` divided by ``size``, the channels per group."""

    node: str
    tensor: str
    attribute: str = "group"
    size: int = 1


@dataclass(frozen=True)
class ChannelRange:
    """Split/Slice/Pad on the channel axis: rewrite sizes, starts/ends or pads from the masks of its tensors."""

    node: str
    axis: int


@dataclass(frozen=True)
class ShapeDim:
    """A shape constant (Reshape ``shape``, Resize ``sizes``) at ``input_index`` that bakes in the channel count
    of ``tensor`` at position ``dim``."""

    node: str
    input_index: int
    dim: int
    tensor: str


Edit = SliceInitializer | SetGroup | ChannelRange | ShapeDim


@dataclass
class ChannelGroup:
    """Channels removed together: every producer writing them and every consumer reading them."""

    id: int
    classes: np.ndarray            # class ids, in a canonical order (D = len)
    frozen: np.ndarray             # bool per class: must be kept
    producers: list[str]
    consumers: list[Consumer]
    members: list[str]             # other nodes whose parameters follow the group (BN, depthwise, bias, ...)
    reasons: list[str] = field(default_factory=list)   # why channels are frozen

    @property
    def size(self) -> int:
        return int(len(self.classes))

    @property
    def prunable(self) -> bool:
        return bool(self.consumers) and not bool(self.frozen.all())

    def fewest(self, share: float) -> int:
        """Channels kept at ``share`` (0–1) of the group's: rounded up, at least its frozen ones and one."""
        return max(int(np.ceil(share * self.size - 1e-9)), int(self.frozen.sum()), 1)

    @property
    def name(self) -> str:
        return self.producers[0] if self.producers else (self.consumers[0].node if self.consumers else f"group{self.id}")


@dataclass
class Analysis:
    """Result of :func:`onnxprune.analysis.find_groups`."""

    layouts: dict[str, Layout]
    class_of_label: np.ndarray     # label → class id
    n_classes: int
    groups: list[ChannelGroup]
    consumers: list[Consumer]
    edits: list[Edit]
    shapes: dict[str, tuple[int, ...]]
    blocked: list[tuple[str, str, str]]   # (node, op, reason) for every node that froze channels

    def classes_of(self, tensor: str) -> np.ndarray:
        """Class id of each channel position of ``tensor`` (not expanded by repeat)."""
        return self.class_of_label[self.layouts[tensor].labels]

    def mask(self, tensor: str, kept: np.ndarray) -> np.ndarray:
        """Kept mask over the channel axis of ``tensor`` (expanded by its repeat) for a kept-per-class array."""
        lay = self.layouts[tensor]
        return np.repeat(kept[self.class_of_label[lay.labels]], lay.repeat)
