"""Reusable first-pass statistics: ``calibrate --shard K/N``, ``compress --stats`` and ``compress --cache`` (with the
channel rankings made on them), and ``sweep``, which shares one cache between its targets."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from onnxprune.analysis import find_groups
from onnxprune.calibration.blocks import PairwiseSum
from onnxprune.calibration.collect import CalibrationSettings, merge_blocks
from onnxprune.calibration.store import FirstPass
from onnxprune.compress import CompressOptions, calibrated_consumers, compress, load_inputs
from onnxprune.errors import OnnxPruneWarning
from onnxprune.plan import SolverSettings, Target
from onnxprune.sweep import sweep

from conftest import SAMPLES, write_calibration
from conftest import run_cli as run

LENET = SAMPLES / "lenet5_digits.onnx"
DIGITS = SAMPLES / "digits_calib.npz"
CHAIN_A = SAMPLES / "chains" / "a_conv_bn_gap.onnx"
RESNET = SAMPLES / "zoo" / "resnet_basic.ts.onnx"
LENET_ARGS = ["--holdout", "0.3"]



def calibrate_shards(model: Path, data: Path, folder: Path, n: int, extra: list) -> list[Path]:
    paths = [folder / f"stats_{k}.npz" for k in range(1, n + 1)]
    for k, path in enumerate(paths, 1):
        result = run(["calibrate", model, "--data", data, "--shard", f"{k}/{n}", "-o", path, "-q", *extra])
        assert result.exit_code == 0, result.output
    return paths


@pytest.mark.parametrize("model,n,extra", [
    (LENET, 2, [*LENET_ARGS, "--independent"]),
    # positions subsampled: each shard skips the random draws of the samples before it
    (CHAIN_A, 3, ["--max-positions", "5", "--batch-size", "8", "--independent"]),
    # residual blocks: the gains measured in the first pass are summed too (error-correcting mode)
    (RESNET, 3, ["--batch-size", "8"]),
    # --exclude on both commands: the statistics are of the same consumers
    (LENET, 2, [*LENET_ARGS, "--independent", "--exclude", "/conv1/*"]),
    # augmented copies: each shard makes the same bytes of the copies it holds
    (LENET, 3, [*LENET_ARGS, "--augment", "1", "--augment-ops", "crop,scale,flip"]),
], ids=["lenet-2-shards", "chain-3-shards-subsampled", "resnet-3-shards-error-correcting", "lenet-excluded",
        "lenet-3-shards-augmented"])
def test_summed_shards_give_the_single_pass_model(tmp_path, model, n, extra):
    data = {LENET: DIGITS, RESNET: RESNET.with_name("resnet_basic.npz")}.get(model) \
        or write_calibration(model, tmp_path, n=60)
    paths = calibrate_shards(model, data, tmp_path, n, extra)
    common = [model, "--data", data, "--target-flops", "0.5", "-q", *extra]
    summed = run(["compress", *common, "--stats", tmp_path / "stats_*.npz", "-o", tmp_path / "summed.onnx",
                  "--report", tmp_path / "summed.json"])
    assert summed.exit_code == 0, summed.output
    single = run(["compress", *common, "-o", tmp_path / "single.onnx"])
    assert single.exit_code == 0, single.output
    assert (tmp_path / "summed.onnx").read_bytes() == (tmp_path / "single.onnx").read_bytes()
    assert f"from {n} --stats file(s)" in (tmp_path / "summed.json").read_text()
    assert not list(tmp_path.glob("*.tmp")) and len(paths) == n


def test_shards_add_up_to_the_single_pass_statistics_bit_for_bit():
    """Same rows, folds and reduction order: the summed shards are the one-pass sums to the last bit."""
    options = CompressOptions(calibration=CalibrationSettings(batch_size=16, max_positions=8), independent=True)
    loaded = load_inputs(LENET, DIGITS, options)
    consumers = calibrated_consumers(find_groups(loaded.model, loaded.shapes))
    first = FirstPass(loaded.model, consumers, loaded.data, loaded.calib_idx, options.calibration, folds=True)
    single = first.collect().total()
    summed = PairwiseSum(first.layout.count, merge_blocks)
    for k in (1, 2, 3):
        summed.extend(first.collect(k, 3).nodes)
    summed = summed.total()
    assert sum(len(first.shard(k, 3)[0]) for k in (1, 2, 3)) == len(loaded.calib_idx)
    assert summed.keys() == single.keys()
    for node, entry in single.items():
        for part in ("full", "odd"):
            expected, total = getattr(entry, part), getattr(summed[node], part)
            if expected is None:
                assert total is None
                continue
            assert total.n_samples_seen_ == expected.n_samples_seen_
            for key, value in expected.to_arrays().items():
                assert np.array_equal(total.to_arrays()[key], value), (node, part, key)


def test_error_correcting_mode_sums_the_first_pass_and_still_reads_the_data(tmp_path):
    calibrate_shards(LENET, DIGITS, tmp_path, 2, LENET_ARGS)
    common = [LENET, "--data", DIGITS, "--target-flops", "0.25", "-q", *LENET_ARGS]
    summed = run(["compress", *common, "--stats", tmp_path / "stats_1.npz", "--stats", tmp_path / "stats_2.npz",
                  "-o", tmp_path / "summed.onnx", "--report", tmp_path / "r.json"])
    assert summed.exit_code == 0, summed.output
    assert "error-correcting re-fit" in (tmp_path / "r.json").read_text()
    single = run(["compress", *common, "-o", tmp_path / "single.onnx"])
    assert single.exit_code == 0, single.output
    assert (tmp_path / "summed.onnx").read_bytes() == (tmp_path / "single.onnx").read_bytes()


def _other_data(tmp_path: Path) -> Path:
    arrays = dict(np.load(DIGITS))
    arrays["input"] = arrays["input"] + np.float32(0.01)
    np.savez(tmp_path / "other.npz", **arrays)
    return tmp_path / "other.npz"


@pytest.fixture(scope="module")
def lenet_shards(tmp_path_factory) -> list[Path]:
    """Both shards of LeNet's calibration set, with folds (for --independent)."""
    return calibrate_shards(LENET, DIGITS, tmp_path_factory.mktemp("shards"), 2, [*LENET_ARGS, "--independent"])


@pytest.mark.parametrize("case,code,text", [
    ("missing shard", 4, "lacks shard 2 of 2"),
    ("other sharding", 4, "different shardings"),
    ("other model", 3, "statistics of another model"),
    ("other seed", 4, "computed with --seed 0; this run uses --seed 1"),
    ("other split", 4, "another calibration split"),
    ("other data", 3, "other calibration samples"),
    ("no folds", 4, "lacks the fold statistics"),
    ("not statistics", 3, "cannot read"),
    ("with cache", 4, "not both"),
])
def test_mismatched_statistics_are_refused_with_one_line(tmp_path, lenet_shards, case, code, text):
    model, data, args = LENET, DIGITS, [*LENET_ARGS, "--independent"]
    stats = shards = lenet_shards
    if case == "missing shard":
        stats = shards[:1]
    elif case == "other sharding":
        stats = [tmp_path / "third.npz", shards[1]]
        assert run(["calibrate", LENET, "--data", DIGITS, *args, "--shard", "1/3", "-o", stats[0]]).exit_code == 0
    elif case == "other model":
        model = shutil.copy(CHAIN_A, tmp_path)
        data = write_calibration(CHAIN_A, tmp_path)
        stats = shards[:1]
    elif case == "other seed":
        args = [*args, "--seed", "1"]
    elif case == "other split":
        args = ["--holdout", "0.2", "--independent"]
    elif case == "other data":
        data = _other_data(tmp_path)
    elif case == "no folds":
        (tmp_path / "nofolds").mkdir()
        stats = calibrate_shards(LENET, DIGITS, tmp_path / "nofolds", 2, LENET_ARGS)
    elif case == "not statistics":
        np.savez(tmp_path / "stats_2.npz", header=np.array("{}"))
        stats = [shards[0], tmp_path / "stats_2.npz"]
    elif case == "with cache":
        args = [*args, "--cache", tmp_path / "cache"]
    result = run(["compress", model, "--data", data, *args, "--target-flops", "0.5", "-o", tmp_path / "out.onnx",
                  *[a for path in stats for a in ("--stats", path)]])
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:") and text in lines[0], result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_calibrate_refuses_more_shards_than_blocks(tmp_path):
    result = run(["calibrate", LENET, "--data", DIGITS, "--batch-size", "256", "--shard", "4/4",
                  "-o", tmp_path / "s.npz"])
    assert result.exit_code == 4 and "4 shards are too many" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _chain_data(tmp_path: Path) -> Path:
    """Random calibration data for chain A in tmp_path."""
    data = tmp_path / f"{CHAIN_A.stem}_calib.npz"
    if not data.exists():
        write_calibration(CHAIN_A, tmp_path)
    return data


def _cached(tmp_path: Path, target: float, cache: Path | None, name: str, solver: SolverSettings = SolverSettings()):
    """Compress chain A (random calibration data in tmp_path) at ``target`` with ``cache``."""
    options = CompressOptions(target=Target("flops", target), cache_dir=cache, solver=solver)
    return compress(CHAIN_A, _chain_data(tmp_path), options, output=tmp_path / name)


def test_cache_skips_calibration_and_the_solve_on_the_second_run(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = _cached(tmp_path, 0.7, cache, "a.onnx")
    assert not any("no calibration pass" in n for n in first.report.notes)
    assert "no solve: channel rankings from the cache" not in first.report.notes
    assert len(list(cache.glob("*.npz"))) == 1
    assert len(list((cache / "rankings").glob("*.npz"))) == 1
    _cached(tmp_path, 0.5, None, "fresh.onnx")

    def no_calibration(*args, **kwargs):
        raise AssertionError("the first calibration pass ran despite the cache")

    def no_ranking(*args, **kwargs):
        raise AssertionError("the channels were ranked again despite the cache")

    monkeypatch.setattr("onnxprune.calibration.store.collect_blocks", no_calibration)
    monkeypatch.setattr("onnxprune.compress.rank_groups", no_ranking)
    cached = _cached(tmp_path, 0.5, cache, "cached.onnx")
    assert "no calibration pass: first-pass statistics from the cache" in cached.report.notes
    assert "no solve: channel rankings from the cache" in cached.report.notes
    assert "error-correcting re-fit" in " ".join(cached.report.notes)
    assert (tmp_path / "cached.onnx").read_bytes() == (tmp_path / "fresh.onnx").read_bytes()


def test_corrupt_cache_entry_is_ignored_with_a_warning(tmp_path):
    cache = tmp_path / "cache"
    _cached(tmp_path, 0.5, cache, "a.onnx")
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:1000])  # truncated
    with pytest.warns(OnnxPruneWarning, match="Ignored: the cache entry is computed again"):
        again = _cached(tmp_path, 0.5, cache, "b.onnx")
    assert not any("no calibration pass" in n for n in again.report.notes)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    result = run(["compress", CHAIN_A, "--data", tmp_path / f"{CHAIN_A.stem}_calib.npz", "--target-flops", "0.5",
                  "--cache", cache, "-o", tmp_path / "c.onnx", "--report", tmp_path / "c.json", "-q"])
    assert result.exit_code == 0 and result.stderr == "", result.stderr  # the entry was rewritten
    assert "from the cache" in (tmp_path / "c.json").read_text()


def test_unreadable_cache_entry_warns_on_the_command_line_in_one_line(tmp_path):
    cache = tmp_path / "cache"
    _cached(tmp_path, 0.5, cache, "a.onnx")
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(b"not a zip file")
    result = run(["compress", CHAIN_A, "--data", tmp_path / f"{CHAIN_A.stem}_calib.npz", "--target-flops", "0.5",
                  "--cache", cache, "-o", tmp_path / "b.onnx", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("onnxprune: warning: cannot read") and result.stderr.count("\n") == 1


def test_cached_rankings_are_those_of_the_same_solver_settings(tmp_path):
    """Other settings rank again from the cached statistics; an entry made under other settings is refused."""
    cache = tmp_path / "cache"
    _cached(tmp_path, 0.5, cache, "a.onnx")
    (default,) = (cache / "rankings").glob("*.npz")
    other = _cached(tmp_path, 0.5, cache, "b.onnx", SolverSettings(tau=1e-2))
    assert "no calibration pass: first-pass statistics from the cache" in other.report.notes
    assert "no solve: channel rankings from the cache" not in other.report.notes
    (hotter,) = set((cache / "rankings").glob("*.npz")) - {default}
    shutil.copyfile(default, hotter)   # the default settings' rankings where tau=1e-2's belong
    with pytest.warns(OnnxPruneWarning, match=r"made from other statistics or settings\). Ignored: they are computed"):
        again = _cached(tmp_path, 0.5, cache, "c.onnx", SolverSettings(tau=1e-2))
    assert "no solve: channel rankings from the cache" not in again.report.notes
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()


def test_unreadable_cached_rankings_are_ranked_again_with_a_warning(tmp_path):
    cache = tmp_path / "cache"
    _cached(tmp_path, 0.5, cache, "a.onnx")
    (entry,) = (cache / "rankings").glob("*.npz")
    entry.write_bytes(b"not a zip file")
    with pytest.warns(OnnxPruneWarning, match=r"\(not a readable rankings file\). Ignored: they are computed again"):
        again = _cached(tmp_path, 0.5, cache, "b.onnx")
    assert "no solve: channel rankings from the cache" not in again.report.notes
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert "no solve: channel rankings from the cache" in _cached(tmp_path, 0.5, cache, "c.onnx").report.notes


def test_sweep_calibrates_and_ranks_once_for_all_targets(tmp_path, monkeypatch):
    import onnxprune.calibration.store as store
    import onnxprune.compress as pipeline

    data, calls = _chain_data(tmp_path), []
    collect, rank = store.collect_blocks, pipeline.rank_groups
    monkeypatch.setattr(store, "collect_blocks", lambda *a, **k: calls.append("calibrate") or collect(*a, **k))
    monkeypatch.setattr(pipeline, "rank_groups", lambda *a, **k: calls.append("rank") or rank(*a, **k))
    models = tmp_path / "models"
    models.mkdir()
    sweep(CHAIN_A, data, [0.5, 0.8], CompressOptions(holdout=0.25), runs=3, out_dir=models)
    assert calls == ["calibrate", "rank"]
    compress(CHAIN_A, data, CompressOptions(target=Target("flops", 0.8), holdout=0.25), output=tmp_path / "f.onnx")
    assert (models / "a_conv_bn_gap.flops80.onnx").read_bytes() == (tmp_path / "f.onnx").read_bytes()



def test_numpy_scalars_in_the_settings_key_the_cached_rankings(tmp_path):
    cache, solver = tmp_path / "cache", SolverSettings(rho=np.float32(1.0))
    _cached(tmp_path, 0.5, cache, "a.onnx", solver)
    assert "no solve: channel rankings from the cache" in _cached(tmp_path, 0.5, cache, "b.onnx", solver).report.notes
