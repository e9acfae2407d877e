"""Unfold convolution inputs into rows of patches in the weight's own column order (channel-major)."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.propagate import attr


def conv_geometry(node: onnx.NodeProto, in_shape: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
    """(pads as [begin..., end...], strides, dilations) of a Conv node, with auto_pad resolved."""
    nd = len(kernel)
    strides = list(attr(node, "strides", [1] * nd))
    dilations = list(attr(node, "dilations", [1] * nd))
    auto = attr(node, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_shape[2:], kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        pads = begin + end
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    else:
        pads = list(attr(node, "pads", [0] * (2 * nd)))
    return pads, strides, dilations


def unfold(x: np.ndarray, kernel: tuple[int, ...], pads: list[int], strides: list[int], dilations: list[int]) -> np.ndarray:
    """Patches of a 1-D or 2-D convolution input.

    ``x`` is (N, C, *spatial); returns (N, P, C*prod(kernel)) where P is the number of output
    positions in row-major order and column ``c*K + k`` is channel c at kernel offset k (K = prod(kernel)).
    """
    xp, (kh, kw), strides, dilations, (ho, wo) = _padded_2d(x, kernel, pads, strides, dilations)
    n, c = xp.shape[:2]
    cols = np.empty((n, ho, wo, c, kh * kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilations[0], j * dilations[1]
            window = xp[:, :, r0:r0 + strides[0] * (ho - 1) + 1:strides[0], c0:c0 + strides[1] * (wo - 1) + 1:strides[1]]
            cols[:, :, :, :, i * kw + j] = window.transpose(0, 2, 3, 1)
    return cols.reshape(n, ho * wo, c * kh * kw)


def unfold_at(x: np.ndarray, kernel: tuple[int, ...], pads: list[int], strides: list[int], dilations: list[int],
              positions: np.ndarray) -> np.ndarray:
    """The rows of :func:`unfold` at the output ``positions`` (N, k) only: (N, k, C*prod(kernel)).

    Gathers just those patches from the unpadded input, the taps that fall in the padding set to 0 after: a large
    feature map is never unfolded whole, nor copied padded (the YOLOv8n layout detector's 1 024² maps: 1 s of np.pad
    in a compress run).
    """
    x, (kh, kw), pads, strides, dilations = _as_2d(x, kernel, pads, strides, dilations)
    n, c, h, w = x.shape
    wo = _output_size(h, w, (kh, kw), pads, strides, dilations)[1]
    rows = (positions // wo)[:, :, None, None] * strides[0] + (np.arange(kh) * dilations[0] - pads[0])[:, None]
    cols = (positions % wo)[:, :, None, None] * strides[1] + (np.arange(kw) * dilations[1] - pads[1])[None, :]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)   # (N, k, kh, kw)
    patches = x[np.arange(n)[:, None, None, None], :, np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)]
    if not inside.all():   # (N, k, kh, kw, C): the padding's taps
        patches[~inside] = 0
    return patches.transpose(0, 1, 4, 2, 3).reshape(n, positions.shape[1], c * kh * kw)


def _as_2d(x: np.ndarray, kernel: tuple[int, ...], pads: list[int], strides: list[int], dilations: list[int]):
    """A 1-D or 2-D conv input as (N, C, H, W), with 2-D kernel, pads (top, left, bottom, right), strides and
    dilations."""
    if x.ndim == 3:
        return x[:, :, None, :], (1, *kernel), [0, pads[0], 0, pads[1]], [1, *strides], [1, *dilations]
    return x, tuple(kernel), list(pads), list(strides), list(dilations)


def _output_size(h: int, w: int, kernel: tuple[int, int], pads: list[int], strides: list[int],
                 dilations: list[int]) -> tuple[int, int]:
    kh, kw = kernel
    return ((h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1,
            (w + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1)


def _padded_2d(x: np.ndarray, kernel: tuple[int, ...], pads: list[int], strides: list[int], dilations: list[int]):
    """A 1-D or 2-D conv input as padded (N, C, H, W), with 2-D kernel, strides, dilations and output size."""
    x, kernel, pads, strides, dilations = _as_2d(x, kernel, pads, strides, dilations)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    return xp, kernel, strides, dilations, _output_size(*x.shape[2:], kernel, pads, strides, dilations)


def transposed_as_conv(node: onnx.NodeProto, x: np.ndarray,
                       kernel: tuple[int, ...]) -> tuple[np.ndarray, list[int], list[int], list[int]]:
    """A ConvTranspose input as the input of the equivalent Conv, with that Conv's (pads, strides, dilations).

    Zeros go between the input pixels (stride), then every side is padded by ``d*(k-1)`` minus the
    node's pads (cropped where negative), plus ``output_padding`` at the end; a stride-1 Conv with
    the flipped, transposed kernel then gives the ConvTranspose output (explicit pads only).
    """
    nd = len(kernel)
    strides = list(attr(node, "strides", [1] * nd))
    dilations = list(attr(node, "dilations", [1] * nd))
    pads = list(attr(node, "pads", [0] * (2 * nd)))
    extra = list(attr(node, "output_padding", [0] * nd))
    n, c, *size = x.shape
    z = np.zeros((n, c, *[s * (i - 1) + 1 for s, i in zip(strides, size)]), dtype=x.dtype)
    z[(slice(None), slice(None), *[slice(None, None, s) for s in strides])] = x
    widths = [(d * (k - 1) - pads[j], d * (k - 1) - pads[nd + j] + extra[j])
              for j, (k, d) in enumerate(zip(kernel, dilations))]
    z = np.pad(z, [(0, 0), (0, 0)] + [(max(a, 0), max(b, 0)) for a, b in widths])
    crop = [slice(max(-a, 0), z.shape[2 + j] - max(-b, 0)) for j, (a, b) in enumerate(widths)]
    return z[(slice(None), slice(None), *crop)], [0] * (2 * nd), [1] * nd, dilations
