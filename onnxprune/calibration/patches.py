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
              positions: np.ndarray, spread: list[int] | None = None) -> np.ndarray:
    """The rows of :func:`unfold` at the output ``positions`` (N, k) only: (N, k, C*prod(kernel)); with ``spread``,
    of the input spread that far apart (``spread_input``: a ConvTranspose's, :func:`transposed_geometry`), whose
    ``pads`` may be negative (cropped).

    Gathers just those patches from the input as it is, the taps that fall in the padding or between spread pixels
    set to 0 after: a large feature map is never unfolded whole, nor copied padded or spread (the YOLOv8n layout
    detector's 1 024² maps: 1 s of np.pad in a compress run; the PP-OCRv5 detector's upsampling ConvTransposes 2.6 s).
    """
    x, (kh, kw), pads, strides, dilations = _as_2d(x, kernel, pads, strides, dilations)
    sh, sw = (1, 1) if spread is None else ((1, *spread) if len(spread) == 1 else tuple(spread))
    n, c, h, w = x.shape
    h, w = (h - 1) * sh + 1, (w - 1) * sw + 1   # the spread input's size
    wo = _output_size(h, w, (kh, kw), pads, strides, dilations)[1]
    rows = (positions // wo)[:, :, None, None] * strides[0] + (np.arange(kh) * dilations[0] - pads[0])[:, None]
    cols = (positions % wo)[:, :, None, None] * strides[1] + (np.arange(kw) * dilations[1] - pads[1])[None, :]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)   # (N, k, kh, kw)
    if sh > 1 or sw > 1:
        inside &= (rows % sh == 0) & (cols % sw == 0)
    patches = x[np.arange(n)[:, None, None, None], :, np.clip(rows, 0, h - 1) // sh, np.clip(cols, 0, w - 1) // sw]
    if not inside.all():   # (N, k, kh, kw, C): the taps in the padding or between spread pixels
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


def transposed_geometry(node: onnx.NodeProto, kernel: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
    """(pads, spread, dilations) of the stride-1 Conv, with the flipped, transposed kernel, that gives a
    ConvTranspose's output: it reads the input spread by the node's strides (zeros between the pixels), padded on
    every side by ``d*(k-1)`` minus the node's pads (negative: cropped), plus ``output_padding`` at the end
    (explicit pads only)."""
    nd = len(kernel)
    strides = list(attr(node, "strides", [1] * nd))
    dilations = list(attr(node, "dilations", [1] * nd))
    pads = list(attr(node, "pads", [0] * (2 * nd)))
    extra = list(attr(node, "output_padding", [0] * nd))
    begin = [d * (k - 1) - pads[j] for j, (k, d) in enumerate(zip(kernel, dilations))]
    end = [d * (k - 1) - pads[nd + j] + extra[j] for j, (k, d) in enumerate(zip(kernel, dilations))]
    return begin + end, strides, dilations


def spread_input(x: np.ndarray, spread: list[int], pads: list[int]) -> np.ndarray:
    """``x`` (N, C, *spatial) with ``spread - 1`` zeros between neighbouring pixels, padded by ``pads`` (begin...,
    end...; negative: cropped): what :func:`unfold` reads, with no padding of its own, for a ConvTranspose."""
    nd = len(spread)
    n, c, *size = x.shape
    z = np.zeros((n, c, *[s * (i - 1) + 1 for s, i in zip(spread, size)]), dtype=x.dtype)
    z[(slice(None), slice(None), *[slice(None, None, s) for s in spread])] = x
    z = np.pad(z, [(0, 0), (0, 0)] + [(max(pads[j], 0), max(pads[nd + j], 0)) for j in range(nd)])
    crop = [slice(max(-pads[j], 0), z.shape[2 + j] - max(-pads[nd + j], 0)) for j in range(nd)]
    return z[(slice(None), slice(None), *crop)]
