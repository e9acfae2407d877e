"""Rewrite a model according to a prune plan."""
from onnxprune.rewrite.apply import apply_plan

__all__ = ["apply_plan"]
