"""Channel groups of an ONNX graph: what must be pruned together, and what blocks the rest."""
from onnxprune.analysis.groups import consumer_columns, exclude_nodes, find_groups
from onnxprune.analysis.model import Analysis, ChannelGroup, Consumer, Layout

__all__ = ["Analysis", "ChannelGroup", "Consumer", "Layout", "consumer_columns", "exclude_nodes", "find_groups"]
