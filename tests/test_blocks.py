"""The fixed reduction order of calibration statistics (``calibration/blocks.py``)."""
from __future__ import annotations

import pytest

from onnxprune.calibration.blocks import MAX_BLOCKS, BlockLayout, PairwiseSum


def _tree(count: int, runs: list[tuple[int, int]]) -> str:
    """The sum of blocks 0..count-1 as an expression (a non-associative combine shows the grouping), each run
    of blocks pushed on its own and its nodes then pushed in order."""
    total = PairwiseSum(count, lambda a, b: f"({a}+{b})")
    for first, stop in runs:
        run = PairwiseSum(count, lambda a, b: f"({a}+{b})")
        for block in range(first, stop):
            run.push(block, 1, str(block))
        total.extend(run.nodes)
    return total.total()


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 11, 16])
def test_every_sharding_groups_the_additions_as_one_pass(count):
    layout_runs = {n: [((k - 1) * count // n, k * count // n) for k in range(1, n + 1)] for n in range(1, count + 1)}
    single = _tree(count, [(0, count)])
    for runs in layout_runs.values():
        assert _tree(count, runs) == single
    assert single.count("+") == count - 1


def test_a_pairwise_tree_not_a_running_sum():
    assert _tree(4, [(0, 4)]) == "((0+1)+(2+3))"
    assert _tree(5, [(0, 5)]) == "(((0+1)+(2+3))+4)"


def test_nodes_out_of_order_or_incomplete_are_refused():
    total = PairwiseSum(4, lambda a, b: a + b)
    total.push(0, 1, 1)
    with pytest.raises(ValueError, match="does not follow"):
        total.push(2, 1, 1)
    with pytest.raises(ValueError, match="not all 4"):
        total.total()


@pytest.mark.parametrize("samples,batch", [(1, 32), (60, 8), (700, 32), (10_000, 32), (33, 1)])
def test_blocks_are_whole_batches_at_fixed_offsets(samples, batch):
    layout = BlockLayout(samples, batch)
    assert 1 <= layout.count <= MAX_BLOCKS and layout.block_samples % batch == 0
    spans = [layout.span(b, b + 1) for b in range(layout.count)]
    assert spans[0][0] == 0 and spans[-1][1] == samples
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:]))
    for n in range(1, layout.count + 1):
        runs = [layout.shard(k, n) for k in range(1, n + 1)]
        assert runs[0][0] == 0 and runs[-1][1] == layout.count and all(f < s for f, s in runs)
