"""Patch gathering for calibration rows: the sampled patches (unfold_at) are the rows of the whole unfold."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.calibration.patches import spread_input, unfold, unfold_at


@st.composite
def _geometry(draw):
    nd = draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    strides = [draw(st.integers(1, 3)) for _ in range(nd)]
    dilations = [draw(st.integers(1, 2)) for _ in range(nd)]
    pads = [draw(st.integers(0, 3)) for _ in range(2 * nd)]
    size = [draw(st.integers((k - 1) * d + 1, 11)) for k, d in zip(kernel, dilations)]
    return draw(st.integers(1, 3)), draw(st.integers(1, 4)), size, kernel, pads, strides, dilations


@settings(deadline=None, derandomize=True, database=None, max_examples=150)
@given(_geometry(), st.integers(0, 2**31 - 1))
def test_sampled_patches_are_the_unfolded_rows_to_the_bit(geometry, seed):
    """Taps in the padding are 0 as in the padded unfold; a NaN in the input stays where it is read."""
    n, c, size, kernel, pads, strides, dilations = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, *size)).astype(np.float32)
    x[..., -1] = np.nan if seed % 3 == 0 else x[..., -1]
    whole = unfold(x, kernel, pads, strides, dilations)
    positions = np.sort(np.argsort(rng.random((n, whole.shape[1])), axis=1)[:, :rng.integers(1, whole.shape[1] + 1)],
                        axis=1)
    got = unfold_at(x, kernel, pads, strides, dilations, positions)
    want = whole[np.arange(n)[:, None], positions]
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@settings(deadline=None, derandomize=True, database=None, max_examples=150)
@given(_geometry(), st.lists(st.integers(1, 3), min_size=2, max_size=2), st.integers(-2, 3), st.integers(0, 2**31 - 1))
def test_sampled_patches_of_a_spread_input_are_those_of_the_spread_map(geometry, spread, crop, seed):
    """A ConvTranspose's patches: gathered from the input as it is (zeros between spread pixels, negative pads
    cropped) to the bits of unfolding the spread, padded map."""
    n, c, size, kernel, pads, _, dilations = geometry
    nd = len(kernel)
    spread, strides = spread[:nd], [1] * nd
    pads = [pad if j % 2 else pad - max(crop, 0) for j, pad in enumerate(pads)]   # some negative: cropped
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, *size)).astype(np.float32)
    spread_map = spread_input(x, spread, pads)
    if any(s < (k - 1) * d + 1 for s, k, d in zip(spread_map.shape[2:], kernel, dilations)):
        return   # cropped below one kernel: no output position
    whole = unfold(spread_map, kernel, [0] * 2 * nd, strides, dilations)
    positions = np.sort(np.argsort(rng.random((n, whole.shape[1])), axis=1)[:, :rng.integers(1, whole.shape[1] + 1)],
                        axis=1)
    got = unfold_at(x, kernel, pads, strides, dilations, positions, spread)
    want = whole[np.arange(n)[:, None], positions]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
