"""onnxprune: channel pruning of ONNX CNNs with entropic sparse regression and data re-fit."""

__version__ = "0.1.0"
