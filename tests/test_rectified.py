"""Re-fits of what a ReLU or Clip lets through: which layers qualify, the shift pass's algebra, and compress."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis.model import Consumer
from onnxprune.rectified import Activation, ShiftSums, TargetShift, rectified_consumers
from onnxprune.residual import Landing
from onnxprune.solvers.refit import refit
from onnxprune.solvers.statistics import LinearStatistics

from conftest import SAMPLES
from conftest import run_cli as run

ZOO = SAMPLES / "zoo"


def _conv(name: str, inp: str, out: str) -> tuple[onnx.NodeProto, Consumer]:
    return (helper.make_node("Conv", [inp, f"{name}.w"], [out], name=name),
            Consumer(node=name, op="Conv", input=inp, output=out, weight=f"{name}.w", kernel=1))


def test_layers_before_a_relu_or_a_constant_clip_qualify():
    pairs = [_conv(f"c{k}", "x", f"y{k}") for k in range(7)]
    nodes = [n for n, _ in pairs] + [
        helper.make_node("Relu", ["y0"], ["r0"]),                                  # plain ReLU
        helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
        helper.make_node("Clip", ["y1", "lo", "six"], ["r1"]),                     # ReLU6: bounds 0 and 6
        helper.make_node("Add", ["y2", "x"], ["s2"]),
        helper.make_node("Relu", ["s2"], ["r2"]),                                  # a rectified residual sum
        helper.make_node("Sigmoid", ["y3"], ["r3"]),                               # not flat on either side
        helper.make_node("Relu", ["y4"], ["r4"]),                                  # also read by the Add below
        helper.make_node("Add", ["y4", "x"], ["s4"]),
        helper.make_node("Clip", ["y5", "lo", "bound"], ["r5"]),                   # a bound computed at run time
        helper.make_node("Relu", ["y6"], ["out"]),
        helper.make_node("Identity", ["x"], ["bound"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 1])],
                              [helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                               for t in ("r0", "r1", "r2", "r3", "r4", "s4", "r5", "out", "y6")],
                              [numpy_helper.from_array(np.array(6.0, np.float32), "six")])
    model = helper.make_model(graph)
    found = rectified_consumers(model, [c for _, c in pairs], {"c2": Landing(total="s2", other="x")})
    assert found == {"c0": Activation("y0", 0.0, np.inf), "c1": Activation("y1", 0.0, 6.0),
                     "c2": Activation("s2", 0.0, np.inf)}


def test_a_conv_reaches_its_relu_through_per_channel_affine_maps():
    """Conv → BatchNormalization → Add (per channel) → Mul (one value) → Relu: the Conv qualifies with the composed
    scale and shift; a constant that does not broadcast per channel, or a map another node also reads, stops it."""
    w = numpy_helper.from_array(np.ones((3, 2, 1, 1), np.float32), "c.w")
    gamma, beta = np.array([1.0, -2.0, 0.5]), np.array([0.1, 0.2, 0.3])
    mean, var = np.array([0.5, -1.0, 2.0]), np.array([4.0, 1.0, 0.25])
    bias = np.array([1.0, 2.0, 3.0]).reshape(3, 1, 1)
    inits = [w] + [numpy_helper.from_array(np.asarray(v, np.float32), n) for v, n in
                   [(gamma, "g"), (beta, "b"), (mean, "m"), (var, "v"), (bias, "bias"), (np.array(2.0), "two"),
                    (np.ones((1, 1, 1, 3)), "rowwise")]]

    def found(tail: list[onnx.NodeProto]) -> dict:
        nodes = [helper.make_node("Conv", ["x", "c.w"], ["y"], name="c"),
                 helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["n"], epsilon=0.0), *tail]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                                  [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)], inits)
        consumer = Consumer(node="c", op="Conv", input="x", output="y", weight="c.w", kernel=1)
        return rectified_consumers(helper.make_model(graph), [consumer], {})

    got = found([helper.make_node("Add", ["n", "bias"], ["a"]), helper.make_node("Mul", ["two", "a"], ["s"]),
                 helper.make_node("Relu", ["s"], ["r"])])["c"]
    scale = gamma / np.sqrt(var)
    assert (got.tensor, got.low, got.high) == ("y", 0.0, np.inf)
    np.testing.assert_allclose(got.scale, 2.0 * scale, rtol=1e-6)
    np.testing.assert_allclose(got.shift, 2.0 * (beta - scale * mean + bias.ravel()), rtol=1e-6)
    assert found([helper.make_node("Add", ["n", "rowwise"], ["a"]), helper.make_node("Relu", ["a"], ["r"])]) == {}
    assert found([helper.make_node("Add", ["n", "bias"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
                  helper.make_node("Sigmoid", ["n"], ["q"])]) == {}


def test_a_shift_through_affine_maps_moves_targets_where_the_activation_reads_them():
    """With the activation reading a·y + b (a negative scale too), the shifted targets give the ReLU the same
    values as the original ones, and the shift is the one taken in what the ReLU reads, mapped back."""
    rng = np.random.default_rng(3)
    n, p, m = 2000, 6, 3
    X = rng.normal(size=(n, p)).astype(np.float32)
    T = (X[:, :m] + 0.3 * np.tanh(X[:, m:]) - 0.2).astype(np.float32)
    fit = refit(LinearStatistics(p, m).partial_fit(X, T).centred(), np.arange(p), 1e-6)
    a, b = np.array([2.0, -0.5, 1.5]), np.array([0.3, -0.2, 0.0])
    shift = TargetShift(Activation("y", 0.0, np.inf, a, b), fit.coef, fit.intercept, landing=False)
    Y, D = shift.shifts(X, np.concatenate([T, T], axis=1))
    read, fitted = a * T + b, a * (X.astype(np.float64) @ fit.coef.T + fit.intercept) + b
    expected = np.where(read <= 0, (np.minimum(fitted, 0.0) - b) / a - T, 0.0)
    np.testing.assert_allclose(D, expected, atol=1e-5)
    assert (D != 0).any() and (D[read > 0] == 0).all()
    np.testing.assert_allclose(np.maximum(a * (T + D) + b, 0.0), np.maximum(read, 0.0), atol=1e-5)


def _rectified_loss(fitted, target, low, high):
    inside = (target > low) & (target < high)
    return float(np.sum(np.where(inside, fitted - target, 0.0) ** 2)
                 + np.sum(np.where(target <= low, np.maximum(fitted - low, 0.0), 0.0) ** 2)
                 + np.sum(np.where(target >= high, np.minimum(fitted - high, 0.0), 0.0) ** 2))


def test_a_shift_pass_is_a_majorise_minimise_step_of_what_the_activation_passes():
    rng = np.random.default_rng(0)
    n, p, m = 4000, 12, 5
    X = rng.normal(size=(n, p)).astype(np.float32)
    # what the layer must reproduce is curved: a linear fit cannot match it everywhere, only where it counts
    T = (np.tanh(X[:, :m]) * 2.0 + 0.5 * X[:, m:2 * m] ** 2 - 0.8).astype(np.float32)
    plain = LinearStatistics(p, m).partial_fit(X, T)
    fit = refit(plain.centred(), np.arange(p), 1e-6)
    shift = TargetShift(Activation("t", 0.0, 1.5), fit.coef, fit.intercept, landing=False)
    Y, D = shift.shifts(X, np.concatenate([T, T], axis=1))
    np.testing.assert_array_equal(Y, T)
    fitted = X.astype(np.float64) @ fit.coef.T + fit.intercept
    expected = np.where(T <= 0, np.minimum(fitted, 0.0), np.where(T >= 1.5, np.maximum(fitted, 1.5), T)) - T
    np.testing.assert_allclose(D, expected, atol=1e-5)
    sums = ShiftSums(p, m)
    sums.add(X, Y, D)
    moved = sums.shifted(plain)
    direct = LinearStatistics(p, m).partial_fit(X, T + D)   # the same statistics from the shifted targets themselves
    for a, b in ((moved.cross_, direct.cross_), (moved.sum_y_, direct.sum_y_)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)
    assert abs(moved.sum_sq_y_ - direct.sum_sq_y_) <= 1e-5 * direct.sum_sq_y_
    np.testing.assert_array_equal(plain.cross_, LinearStatistics(p, m).partial_fit(X, T).cross_)  # a copy moved
    again = refit(moved.centred(), np.arange(p), 1e-6)
    before = _rectified_loss(fitted, T, 0.0, 1.5)
    after = _rectified_loss(X.astype(np.float64) @ again.coef.T + again.intercept, T, 0.0, 1.5)
    assert after < 0.9 * before


def test_a_landing_moves_its_bounds_with_the_other_branch():
    """A branch added to another before the ReLU: the bound on the branch is minus the other branch."""
    other = np.array([[2.0, -1.0]], np.float32)[:, :, None]
    total = np.array([[-0.5, -0.5]], np.float32)[:, :, None]       # the original sum: clipped in both channels
    target = total - other                                         # what the branch must add
    shift = TargetShift(Activation("s", 0.0, np.inf), np.zeros((2, 1)), np.array([-2.0, 3.0]), landing=True)
    Y, D = shift.shifts(np.zeros((1, 1), np.float32), np.concatenate([target, total], axis=1)[:, :, 0])
    # channel 0: the re-fit gives -2, the sum 0 stays clipped: the target becomes -2 itself;
    # channel 1: it gives 3, the sum 2 crosses the bound: the target becomes 1, where the sum is 0
    np.testing.assert_allclose(Y + D, [[-2.0, 1.0]])


def test_compress_fits_relu_layers_to_what_passes_and_says_so(tmp_path):
    model, data = ZOO / "resnet_basic.ts.onnx", ZOO / "resnet_basic.npz"
    outs = {}
    for passes in (0, 1):
        out, report = tmp_path / f"a{passes}.onnx", tmp_path / f"a{passes}.json"
        result = run(["compress", model, "--data", data, "--target-flops", "0.5", "--activation-passes", passes,
                      "-o", out, "--report", report])
        assert result.exit_code == 0, result.output
        outs[passes] = (onnx.load(out), json.loads(report.read_text()), result.output)
    _, plain, plain_text = outs[0]
    _, shifted, text = outs[1]
    assert plain["activation_refit"] is None and "ReLU or Clip" not in plain_text
    layers = shifted["activation_refit"]["layers"]
    assert shifted["activation_refit"]["passes"] == 1 and layers
    assert f"{len(layers)} layer(s) re-fitted to what the ReLU or Clip after them lets through" in text
    weights = [{i.name: numpy_helper.to_array(i) for i in outs[k][0].graph.initializer} for k in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert any(not np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    onnx.checker.check_model(outs[1][0], full_check=True)
