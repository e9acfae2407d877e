"""Rewrite a model according to a prune plan."""
from onnxprune.rewrite.apply import apply_plan, install_refits, weight_specs

__all__ = ["apply_plan", "install_refits", "weight_specs"]
