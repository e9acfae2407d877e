"""The one reduction order of calibration statistics, however the work is split (README "Reproducibility").

The calibration split is cut into at most :data:`MAX_BLOCKS` blocks of whole batches at fixed sample offsets.
Each block's statistics are summed from zero, batch by batch, and the blocks are combined in one fixed pairwise
tree over block index: node (first, size) covers the aligned blocks [first, first + size), size a power of two,
and is the sum of its two halves, left + right. A pass over a run of blocks (one process, a ``calibrate --shard``
file, a parallel worker) keeps the tree nodes that lie inside its run; pushing the runs' nodes in block order
repeats exactly the additions of one pass over the whole split, so the sums agree to the last bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Iterator, NamedTuple, TypeVar

MAX_BLOCKS = 16

V = TypeVar("V")


@dataclass(frozen=True)
class BlockLayout:
    """The blocks of a calibration split of ``samples`` samples taken ``batch`` at a time."""

    samples: int
    batch: int

    @property
    def batches(self) -> int:
        return -(-self.samples // self.batch)

    @property
    def block_samples(self) -> int:
        """Samples per block (the last block may hold fewer)."""
        return max(-(-self.batches // MAX_BLOCKS), 1) * self.batch

    @property
    def count(self) -> int:
        return max(-(-self.samples // self.block_samples), 1)

    def span(self, first: int, stop: int) -> tuple[int, int]:
        """Sample range [start, end) of blocks [first, stop)."""
        return min(first * self.block_samples, self.samples), min(stop * self.block_samples, self.samples)

    def batch_numbers(self, first: int, stop: int) -> range:
        """Numbers of the batches of blocks [first, stop) (batch b holds samples [b·batch, (b + 1)·batch))."""
        start, end = self.span(first, stop)
        return range(start // self.batch, -(-end // self.batch))

    def shard(self, k: int, n: int) -> tuple[int, int]:
        """Blocks [first, stop) of shard ``k`` of ``n`` (1 <= k <= n <= count): a fixed run of whole blocks."""
        return (k - 1) * self.count // n, k * self.count // n


class Node(NamedTuple, Generic[V]):
    first: int
    size: int
    value: V


class PairwiseSum(Generic[V]):
    """The tree nodes of a run of blocks, combined as soon as both halves of a node are present.

    ``combine(left, right)`` adds ``right`` into ``left`` (it may do so in place) and returns the sum.
    """

    def __init__(self, count: int, combine: Callable[[V, V], V]):
        self.count = count
        self.combine = combine
        self.nodes: list[Node[V]] = []

    def push(self, first: int, size: int, value: V) -> None:
        """Add the node covering blocks [first, first + size); nodes come in block order."""
        if self.nodes and self.nodes[-1].first + self.nodes[-1].size != first:
            raise ValueError(f"block {first} does not follow blocks "
                             f"[{self.nodes[-1].first}, {self.nodes[-1].first + self.nodes[-1].size}).")
        self.nodes.append(Node(first, size, value))
        while len(self.nodes) > 1 and _siblings(self.nodes[-2], self.nodes[-1]):
            right = self.nodes.pop()
            left = self.nodes.pop()
            self.nodes.append(Node(left.first, 2 * left.size, self.combine(left.value, right.value)))

    def extend(self, nodes: Iterator[Node[V]] | list[Node[V]]) -> PairwiseSum[V]:
        for node in nodes:
            self.push(*node)
        return self

    @property
    def complete(self) -> bool:
        """Whether the nodes cover all blocks [0, count)."""
        return bool(self.nodes) and self.nodes[0].first == 0 and \
            self.nodes[-1].first + self.nodes[-1].size == self.count

    def total(self) -> V:
        """The sum over all blocks: the remaining nodes folded left to right, left in place as one node."""
        if not self.complete:
            covered = [(n.first, n.first + n.size) for n in self.nodes]
            raise ValueError(f"the nodes cover blocks {covered}, not all {self.count}.")
        value = self.nodes[0].value
        for node in self.nodes[1:]:
            value = self.combine(value, node.value)
        self.nodes = [Node(0, self.count, value)]
        return value


def _siblings(left: Node, right: Node) -> bool:
    return left.size == right.size and left.first % (2 * left.size) == 0
