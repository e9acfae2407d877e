"""Latency and memory of ONNX models on ONNX Runtime execution providers (library; the CLI is ``onnxprune bench``)."""
from onnxprune.bench.compare import BenchSettings, Comparison, compare_models
from onnxprune.bench.inputs import InputSpec, input_specs, parse_shape_overrides, random_feeds, resolve_shapes
from onnxprune.bench.measure import benchmark, benchmark_models, model_file_bytes
from onnxprune.bench.providers import PROVIDER_ALIASES, ProviderSpec, make_session, resolve_providers
from onnxprune.bench.results import BenchResult, LatencyStats, MemoryStats, RunResult, to_document, write_json
from onnxprune.bench.table import format_table

__all__ = [
    "benchmark",
    "benchmark_models",
    "model_file_bytes",
    "compare_models",
    "BenchSettings",
    "Comparison",
    "resolve_providers",
    "make_session",
    "ProviderSpec",
    "PROVIDER_ALIASES",
    "InputSpec",
    "input_specs",
    "parse_shape_overrides",
    "resolve_shapes",
    "random_feeds",
    "BenchResult",
    "RunResult",
    "LatencyStats",
    "MemoryStats",
    "to_document",
    "write_json",
    "format_table",
]
