"""The error-correcting re-fit in one pass: segments between stages, the frontier kept per batch, the first pass
feeding the first stage, and the same re-fits as the stage-by-stage passes from the input."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.calibration.collect import CalibrationSettings, Keep, collect_statistics, prefetched
from onnxprune.calibration.frontier import FrontierStore
from onnxprune.calibration.segments import schedule
from onnxprune.calibration.stage_pass import ORIGINAL, PRUNED
from onnxprune.compress import CompressOptions, calibrated_consumers, first_pass, load_inputs
from onnxprune.analysis import find_groups
from onnxprune.plan import PrunePlan, SolverSettings, Target, solve
from onnxprune.residual import residual_landings
from onnxprune.rewrite import apply_plan
from onnxprune.sequential import _levels, _refit_task, _stages, _Stages, first_pass_keep, sequential_refit
from onnxprune.metrics import count_model

from conftest import SAMPLES
from conftest import run_cli as run

ZOO = SAMPLES / "zoo"
PLAIN = SolverSettings(activation_passes=0)   # the reference re-fits by plain least squares
LOOKALIKES = SAMPLES / "lookalikes"


def reference_refit(model, analysis, plan, consumers, data, indices, settings, landings):
    """The stage-by-stage algorithm this replaces: before each stage the model is rewritten with the re-fits so far
    and both networks run from the input over all calibration data (plain least squares: the one-pass runs below
    take ``PLAIN``, no shift pass)."""
    level = _levels(model, consumers)
    refits = {}
    from onnxprune.plan import consumer_weight_matrix
    from onnx import numpy_helper

    nodes = {n.name: n for n in model.graph.node}
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for stage in _stages(level, consumers):
        current = apply_plan(model, analysis, PrunePlan(plan.kept, refits, []))
        final = {c.node: landings[c.node] for c in stage
                 if c.node in landings and level[landings[c.node].other] < level[c.output]}
        masks = {c.node: analysis.mask(c.output, plan.kept) for c in stage if c.node in final}
        stats = collect_statistics(model, stage, data, indices, settings, inputs_model=current, landings=final,
                                   output_masks=masks)
        for c in stage:
            cols = np.repeat(analysis.mask(c.input, plan.kept), c.kernel)
            w0 = consumer_weight_matrix(nodes[c.node], c, w)[:, cols]
            refits[c.node] = _refit_task(None, (stats[c.node], int(cols.sum()), w0, False, True))[0]
    return refits


def _prepared(model_path: Path, data_path: Path, fraction: float = 0.5, batch_size: int = 8, **extra):
    options = CompressOptions(target=Target("flops", fraction),
                              calibration=CalibrationSettings(batch_size=batch_size, max_positions=16), **extra)
    loaded = load_inputs(model_path, data_path, options)
    analysis = find_groups(loaded.model, loaded.shapes)
    first = first_pass(loaded, analysis, options)
    stats = first.collect().total()
    counts = count_model(loaded.model, loaded.input_shapes)
    plan = solve(loaded.model, analysis, stats, target=options.target, counts=counts, fit_consumers=False)
    return loaded, analysis, first, plan, options


def _assert_same_refits(ours, reference):
    assert set(ours) == set(reference)
    for node, fit in reference.items():
        scale = max(float(np.abs(fit.coef).max()), 1e-12)
        np.testing.assert_allclose(ours[node].coef, fit.coef, rtol=0, atol=1e-5 * scale, err_msg=node)
        np.testing.assert_allclose(ours[node].intercept, fit.intercept, rtol=0,
                                   atol=1e-5 * max(scale, float(np.abs(fit.intercept).max())), err_msg=node)


CASES = [(ZOO / "resnet_basic.ts.onnx", ZOO / "resnet_basic.npz"),
         (ZOO / "densenet.dynamo.onnx", ZOO / "densenet.npz"),
         (ZOO / "mobilenet_v2.ts.onnx", ZOO / "mobilenet_v2.npz"),
         (ZOO / "two_input.ts.onnx", ZOO / "two_input.npz"),
         (ZOO / "mlp.dynamo.onnx", ZOO / "mlp.npz")]


@pytest.mark.parametrize("model_path,data_path", CASES, ids=lambda p: p.stem)
def test_one_pass_refits_match_the_stage_by_stage_passes(model_path, data_path):
    loaded, analysis, first, plan, options = _prepared(model_path, data_path)
    args = (loaded.model, analysis, plan, first.consumers, loaded.data, loaded.calib_idx, options.calibration)
    reference = reference_refit(*args, first.landings)
    assert reference, "the plan prunes nothing: the comparison would be empty"
    _assert_same_refits(sequential_refit(*args, PLAIN, landings=first.landings), reference)


def test_the_first_pass_feeds_the_first_stage():
    """A first pass that keeps what the first stage reads gives the same re-fits, and the store ends empty."""
    loaded, analysis, first, plan, options = _prepared(ZOO / "resnet_basic.ts.onnx", ZOO / "resnet_basic.npz")
    args = (loaded.model, analysis, plan, first.consumers, loaded.data, loaded.calib_idx, options.calibration)
    plain = sequential_refit(*args, landings=first.landings)   # with the shift passes: the first pass of each
    # stage then leaves the store as it found it, and the last shift pass moves it on
    with FrontierStore() as store:
        keep = first_pass_keep(loaded.model, first.consumers, first.landings, first.tensors)
        assert keep[ORIGINAL] and keep[PRUNED]
        seeded = first.collect(keep=Keep(store, keep))
        assert store.batches() and seeded.total().keys() == first.collect().total().keys()
        refits = sequential_refit(*args, landings=first.landings, store=store, seeded=first.tensors)
        assert not store.batches()
    assert any(fit.shift_passes for fit in refits.values()), "no layer was fitted to its ReLU"
    _assert_same_refits(refits, plain)


def test_every_node_runs_once_per_batch():
    """Across all stages, each node of either network that depends on the input belongs to one segment only."""
    loaded, analysis, first, plan, _ = _prepared(ZOO / "resnet_bottleneck.ts.onnx", ZOO / "resnet_bottleneck.npz")
    stages = _Stages(loaded.model, first.consumers, first.landings)
    pruned = apply_plan(loaded.model, analysis, PrunePlan(plan.kept, {}, []))
    for net, model in ((ORIGINAL, loaded.model), (PRUNED, pruned)):
        segments = schedule(model, stages.wanted[net])
        made = [t for s in segments for t in s.outputs]
        assert len(made) == len(set(made)), f"{net}: a tensor is computed twice"
        for k, segment in enumerate(segments):
            there = set(segment.inputs) | set(segment.outputs)
            assert set(segment.wanted) <= there | set(segments[k - 1].keep if k else ())
            if k:  # a segment reads only what the previous stage kept, or the graph inputs
                graph_inputs = {i.name for i in model.graph.input}
                assert set(segment.inputs) <= segments[k - 1].keep | graph_inputs
        assert not segments[-1].keep


def test_a_budget_of_zero_spills_everything_and_gives_the_same_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    model, data = ZOO / "resnet_basic.ts.onnx", ZOO / "resnet_basic.npz"
    common = [model, "--data", data, "--target-flops", "0.5", "-q", "--batch-size", "8"]
    assert run(["compress", *common, "-o", tmp_path / "memory.onnx"]).exit_code == 0
    result = run(["compress", *common, "--memory-budget", "0", "-o", tmp_path / "disk.onnx",
                  "--report", tmp_path / "r.json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "memory.onnx").read_bytes() == (tmp_path / "disk.onnx").read_bytes()
    frontier = json.loads((tmp_path / "r.json").read_text())["memory"]["frontier"]
    assert frontier["peak_in_memory_mib"] == 0 and frontier["peak_on_disk_mib"] > 0
    assert not list(tmp_path.glob("onnxprune-frontier-*")), "the temporary folder was left behind"


def test_the_temporary_folder_goes_on_error_and_interrupt(tmp_path, monkeypatch):
    import onnxprune.calibration.stage_pass as stage_pass

    made = []
    real = FrontierStore._place

    def spy(self, array):
        placed = real(self, array)
        if self.folder:
            made.append(self.folder)
        return placed

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(FrontierStore, "_place", spy)
    monkeypatch.setattr(stage_pass, "Rows", lambda *a, **k: type("R", (), {"accumulate": lambda *a: interrupt()})())
    from onnxprune.compress import compress

    with pytest.raises(KeyboardInterrupt):
        compress(ZOO / "resnet_basic.ts.onnx", ZOO / "resnet_basic.npz",
                 CompressOptions(target=Target("flops", 0.5), memory_budget=0))
    assert made and not any(os.path.exists(folder) for folder in made)


def test_frontier_store_accounts_and_frees(tmp_path):
    a, b = np.ones((4, 4), np.float32), np.zeros(10, np.float64)
    with FrontierStore(budget=100, folder=tmp_path) as store:
        store.set(0, {"x": a, "y": a})          # one copy for two keys
        assert store.memory_bytes == a.nbytes and store.disk_bytes == 0
        store.set(1, {"z": b})                   # over the budget: on disk
        assert store.disk_bytes == b.nbytes and isinstance(store.get(1)["z"], np.memmap)
        np.testing.assert_array_equal(store.get(1)["z"], b)
        kept = store.get(0)["x"]
        store.set(0, {"x": kept})                # kept arrays stay where they are
        assert store.memory_bytes == a.nbytes
        store.set(1, {})
        assert store.disk_bytes == 0 and store.batches() == [0]
        assert not list(Path(store.folder).iterdir())
        folder = store.folder
    assert not os.path.exists(folder) and store.memory_bytes == 0


def test_prefetched_keeps_order_and_raises_where_the_producer_failed():
    assert list(prefetched(iter(range(20)))) == list(range(20))

    def failing():
        yield 1
        raise ValueError("bad sample")

    got = []
    with pytest.raises(ValueError, match="bad sample"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]
    stopped = prefetched(iter(range(1000)))
    assert next(stopped) == 0
    stopped.close()
    assert not [t for t in threading.enumerate() if t.name == "onnxprune-prefetch"]


def test_memory_budget_option_and_report(tmp_path):
    model, data = ZOO / "resnet_basic.ts.onnx", ZOO / "resnet_basic.npz"
    bad = run(["compress", model, "--data", data, "--memory-budget", "lots", "-o", tmp_path / "x.onnx"])
    assert bad.exit_code == 4 and "--memory-budget" in bad.output and not (tmp_path / "x.onnx").exists()
    result = run(["compress", model, "--data", data, "--target-flops", "0.5", "--memory-budget", "64M", "-v",
                  "-o", tmp_path / "y.onnx", "--report", tmp_path / "r.json"])
    assert result.exit_code == 0, result.output
    assert "peak memory (resident, MiB): load" in result.output
    memory = json.loads((tmp_path / "r.json").read_text())["memory"]
    assert memory["frontier"]["budget_mib"] == 64.0
    assert set(memory["peak_rss_mib"]) >= {"calibrate", "solve", "error-correct"}
    assert memory["peak_mib"] == max(memory["peak_rss_mib"].values())
    assert all(v > 0 for v in memory["peak_rss_mib"].values())


@pytest.mark.parametrize("arch", ["yolov8_like", "ppocr_rec_like"])
def test_lookalike_refits_match(arch):
    """Many stages, concatenations and skip connections to the neck: the frontier holds them across stages."""
    from test_lookalikes import _image_options

    _, analysis, first, plan, options = _prepared(LOOKALIKES / f"{arch}.ts.onnx", LOOKALIKES / f"{arch}_calib",
                                                  image=_image_options(arch))
    loaded = first
    args = (loaded.model, analysis, plan, first.consumers, loaded.data, loaded.indices, options.calibration)
    _assert_same_refits(sequential_refit(*args, PLAIN, landings=first.landings),
                        reference_refit(*args, first.landings))


@pytest.mark.parametrize("model_path,data_path", [*CASES, (ZOO / "unet.ts.onnx", ZOO / "unet.npz"),
                                                  (ZOO / "tcn.dynamo.onnx", ZOO / "tcn.npz"),
                                                  (LOOKALIKES / "ppocr_rec_like.ts.onnx",
                                                   LOOKALIKES / "ppocr_rec_like.npz")], ids=lambda p: p.stem)
def test_installing_refits_stage_by_stage_gives_the_rewritten_model(model_path, data_path):
    """Re-fits installed in two steps into the pruned model compute what apply_plan makes with all of them (to
    float32 round-off: the same nodes and initializer values, but other initializer names and order)."""
    import onnxruntime as ort

    from onnxprune.rewrite import install_refits, weight_specs

    loaded, analysis, first, _, options = _prepared(model_path, data_path)
    counts = count_model(loaded.model, loaded.input_shapes)
    plan = solve(loaded.model, analysis, first.collect().total(), target=options.target, counts=counts)
    ops = {c.op for c in analysis.consumers if c.node in plan.refits}
    assert plan.refits and ops, "nothing re-fitted: the comparison would be empty"
    names = sorted(plan.refits)
    current = apply_plan(loaded.model, analysis, PrunePlan(plan.kept, {}, []), shapes=False)
    specs = weight_specs(loaded.model, analysis)
    for part in (names[::2], names[1::2]):
        install_refits(current, analysis, plan.kept, {n: plan.refits[n] for n in part}, specs)
    onnx.checker.check_model(current, full_check=True)
    reference = apply_plan(loaded.model, analysis, PrunePlan(plan.kept, plan.refits, []))
    feed = loaded.data.load(list(loaded.calib_idx)[:4])
    got, want = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
                 for m in (current, reference))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * float(np.abs(w).max()))


def test_the_heap_is_reused_from_a_wide_stage_until_a_narrow_one(monkeypatch):
    """The heap's reuse (heap.py) is held from a stage whose widest consumer keeps REUSE_FROM_COLUMNS input columns
    or more through the next such stages, handed back at the first narrower stage, and never left held."""
    import contextlib

    import onnxprune.sequential as sequential

    loaded, analysis, first, plan, options = _prepared(ZOO / "vgg_bn.ts.onnx", ZOO / "vgg_bn.npz")
    widths = []   # per stage, the most input columns a consumer keeps
    for stage in _Stages(loaded.model, first.consumers, first.landings).stages:
        widths.append(max(int(np.repeat(analysis.mask(c.input, plan.kept), c.kernel).sum()) for c in stage))
    threshold = sorted(set(widths))[len(set(widths)) // 2]
    wide = [w >= threshold for w in widths]
    assert any(wide) and not all(wide), widths
    events = []

    @contextlib.contextmanager
    def recorded():
        events.append(("enter", len(stages_seen)))
        yield True
        events.append(("exit", len(stages_seen)))

    stages_seen = []   # a stage's first pass (its statistics: no shifts) per stage
    original_run = sequential.stage_blocks

    def run(step, *args, **kwargs):
        if step.shifts is None:
            stages_seen.append(step.consumers[0].node)
        return original_run(step, *args, **kwargs)

    monkeypatch.setattr(sequential, "REUSE_FROM_COLUMNS", threshold)
    monkeypatch.setattr(sequential, "reusing_freed_memory", recorded)
    monkeypatch.setattr(sequential, "stage_blocks", run)
    sequential_refit(loaded.model, analysis, plan, first.consumers, loaded.data, loaded.calib_idx,
                     options.calibration, landings=first.landings)
    assert len(stages_seen) == len(widths)
    expected, held = [], False
    for k, w in enumerate(wide):   # the stage's pass starts after the switch: k stages seen before it
        if w and not held:
            expected.append(("enter", k))
        elif held and not w:
            expected.append(("exit", k))
        held = w
    if held:
        expected.append(("exit", len(widths)))
    assert events == expected
