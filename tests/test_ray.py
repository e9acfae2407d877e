"""Calibration passes and rankings on a Ray cluster (``--ray``): the same bytes as one process, whatever the workers.

The Ray tests skip when ray is not installed (``pip install -e ".[ray]"``; the ``[dev]`` extra has it). They start
one head apart (``ray start --head --block``, stopped at the end) and one local Ray through ``--ray local:2``; CLI
runs are subprocesses, so Ray's own logging and the one-line errors are what a user sees.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxprune.compress import CompressOptions, compress
from onnxprune.plan import Target

from conftest import SAMPLES
from conftest import run_cli

try:
    import ray
except ImportError:
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (pip install -e '.[ray]'; [dev] has it)")

LENET = SAMPLES / "lenet5_digits.onnx"
DIGITS = SAMPLES / "digits_calib.npz"
RESNET = SAMPLES / "zoo" / "resnet_basic.ts.onnx"
RESNET_DATA = SAMPLES / "zoo" / "resnet_basic.npz"
LENET_ARGS = [LENET, "--data", DIGITS, "--holdout", "0.3", "--target-flops", "0.25"]
RESNET_ARGS = [RESNET, "--data", RESNET_DATA, "--batch-size", "8", "--target-flops", "0.5"]


def onnxprune(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a fresh process (stderr apart)."""
    return subprocess.run([sys.executable, "-m", "onnxprune.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "RAY_DISABLE_USAGE_STATS": "1"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head with 2 CPUs started apart; its address. Stopped (its process group) at the end."""
    if ray is None:
        pytest.skip("ray is not installed")
    port = free_port()
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    temp = Path(f"/tmp/onnxprune-ray-{port}")  # its own session folder (short: Ray's socket paths have a limit)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [Path(sys.executable).with_name("ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
             "--include-dashboard", "false", "--dashboard-port", str(free_port()),
             "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats", "--temp-dir", str(temp)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start --head exited: {log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the Ray head did not come up: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the head's own processes is left
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)


def _report(path: Path) -> dict:
    return json.loads(path.read_text())["executor"]


@needs_ray
def test_local_ray_gives_the_same_bytes(tmp_path):
    """--ray local:2 (the first pass, the rankings and every stage pass as tasks) writes the one-process model."""
    single = onnxprune("compress", *LENET_ARGS, "-q", "-o", tmp_path / "single.onnx", "--report", tmp_path / "single.json")
    assert single.returncode == 0, single.stderr
    shared = onnxprune("compress", *LENET_ARGS, "--ray", "local:2", "-o", tmp_path / "ray.onnx",
                       "--report", tmp_path / "ray.json")
    assert shared.returncode == 0, shared.stderr
    assert (tmp_path / "ray.onnx").read_bytes() == (tmp_path / "single.onnx").read_bytes()
    executor = _report(tmp_path / "ray.json")
    assert executor["kind"] == "ray" and executor["address"] == "local:2" and executor["cpus"] == 2
    assert executor["nodes"] == 1 and executor["tasks"] > 2 and executor["task_seconds"] > 0
    assert "executor: ray at local:2 (1 node, 2 CPUs, 0 GPUs)" in shared.stdout
    local = _report(tmp_path / "single.json")
    assert local["kind"] == "local" and local["address"] is None and local["tasks"] == 0


@needs_ray
def test_score_guided_passes_on_local_ray_give_the_same_bytes(tmp_path):
    """The detection head's score maps travel with the first pass and every stage pass run as tasks."""
    look = SAMPLES / "lookalikes"
    args = [look / "yolov8_like.ts.onnx", "--data", look / "yolov8_like_calib", "--image-size", "320", "--num-samples",
            "8", "--max-positions", "16", "--target-flops", "0.5", "-q"]
    single = onnxprune("compress", *args, "-o", tmp_path / "single.onnx", "--report", tmp_path / "single.json")
    assert single.returncode == 0, single.stderr
    assert any("score head(s)" in note for note in json.loads((tmp_path / "single.json").read_text())["notes"])
    shared = onnxprune("compress", *args, "--ray", "local:2", "-o", tmp_path / "ray.onnx")
    assert shared.returncode == 0, shared.stderr
    assert (tmp_path / "ray.onnx").read_bytes() == (tmp_path / "single.onnx").read_bytes()


@needs_ray
def test_head_started_apart_shards_and_one_process_agree(tmp_path, head):
    """1 process, 2 --shard files summed by --stats, and 2 Ray workers (also with --ray-ship-data, and
    calibrate --ray for one shard) give byte-identical models of a residual network."""
    single = onnxprune("compress", *RESNET_ARGS, "-q", "-o", tmp_path / "single.onnx")
    assert single.returncode == 0, single.stderr
    for k, extra in ((1, ["--ray", head]), (2, [])):
        shard = onnxprune("calibrate", RESNET, "--data", RESNET_DATA, "--batch-size", "8", "--shard", f"{k}/2",
                          "-o", tmp_path / f"stats_{k}.npz", "-q", *extra)
        assert shard.returncode == 0, shard.stderr
    summed = onnxprune("compress", *RESNET_ARGS, "-q", "--stats", tmp_path / "stats_*.npz", "-o", tmp_path / "summed.onnx")
    assert summed.returncode == 0, summed.stderr
    on_head = onnxprune("compress", *RESNET_ARGS, "-q", "--ray", head, "-o", tmp_path / "ray.onnx",
                        "--report", tmp_path / "ray.json")
    assert on_head.returncode == 0, on_head.stderr
    shipped = onnxprune("compress", *RESNET_ARGS, "-q", "--ray", head, "--ray-ship-data", "-o", tmp_path / "shipped.onnx")
    assert shipped.returncode == 0, shipped.stderr
    expected = (tmp_path / "single.onnx").read_bytes()
    for name in ("summed", "ray", "shipped"):
        assert (tmp_path / f"{name}.onnx").read_bytes() == expected, name
    executor = _report(tmp_path / "ray.json")
    assert executor["kind"] == "ray" and executor["address"].endswith(head.split(":")[1]) and executor["tasks"] > 1


def _die_once(fn, marker: str, context, item):
    """Compute the task, then kill this worker process the first time any task gets here (Ray retries it)."""
    value = fn(context, item)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return value
    os._exit(1)


@needs_ray
def test_a_worker_killed_mid_pass_is_retried_with_the_same_result(tmp_path, head):
    from onnxprune.executor import RayExecutor

    class DyingOnce(RayExecutor):
        def map(self, fn, items, *, context=None, on_done=None):
            return super().map(functools.partial(_die_once, fn, str(tmp_path / "died")), items, context=context,
                               on_done=on_done)

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    options = CompressOptions(target=Target("flops", 0.25), holdout=0.3)
    expected = compress(LENET, DIGITS, options, output=tmp_path / "single.onnx")
    with DyingOnce(head) as executor:
        result = compress(LENET, DIGITS, CompressOptions(target=Target("flops", 0.25), holdout=0.3, executor=executor),
                          output=tmp_path / "ray.onnx")
    assert (tmp_path / "died").exists()   # a worker did die, after computing its first task
    assert (tmp_path / "ray.onnx").read_bytes() == (tmp_path / "single.onnx").read_bytes()
    assert result.report.executor["kind"] == "ray" and result.report.executor["tasks"] > 2
    assert expected.report.executor["kind"] == "local"


@needs_ray
def test_a_task_error_is_the_one_line_error_of_one_process(tmp_path, head):
    """An onnxprune error raised inside a task (here: data missing on the workers) reaches the driver as itself."""
    from onnxprune.errors import DataError
    from onnxprune.executor import RayExecutor

    def fail(_context, item):
        raise DataError(f"sample {item} is bad.", note="fix it")

    with RayExecutor(head) as executor:
        assert executor.map(lambda context, item: (context, item * item), [3, 1, 2], context="c") == \
            [("c", 9), ("c", 1), ("c", 4)]
        with pytest.raises(DataError, match="sample 0 is bad") as caught:
            executor.map(fail, [0])
        assert caught.value.one_line() == "sample 0 is bad. Note: fix it"


@needs_ray
def test_workers_of_a_cluster_started_elsewhere_get_openblas_idle_wait(head, monkeypatch):
    """The command line lets OpenBLAS's idle threads sleep at once (``idle_threads``); the workers of a head started
    apart do not inherit this process's environment, so the setting travels with the job (a value the head was not
    started with: its processes inherited this one's environment of then)."""
    from onnxprune.executor import RayExecutor
    from onnxprune.idle_threads import VARIABLE

    monkeypatch.setenv(VARIABLE, "6")
    with RayExecutor(head) as executor:
        assert executor.map(lambda _context, _item: os.environ.get(VARIABLE), [0, 1]) == ["6", "6"]


@needs_ray
def test_an_unreachable_cluster_is_one_line_and_exit_5(tmp_path):
    closed = free_port()
    start = time.monotonic()
    result = onnxprune("compress", *LENET_ARGS, "--ray", f"127.0.0.1:{closed}", "-o", tmp_path / "x.onnx")
    assert result.returncode == 5
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"onnxprune: error: cannot reach the Ray cluster at 127.0.0.1:{closed}")
    assert time.monotonic() - start < 60 and not (tmp_path / "x.onnx").exists()


def test_without_ray_the_option_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` now fails as if it were not installed
    for command in (["compress", *LENET_ARGS], ["calibrate", LENET, "--data", DIGITS], ["sweep", LENET, "--data", DIGITS]):
        result = run_cli([*command, "--ray", "local:2", "-o" if command[0] != "sweep" else "--out-dir",
                          tmp_path / ("x.onnx" if command[0] != "sweep" else "")])
        assert result.exit_code == 4, result.output
        assert 'pip install "onnxprune[ray]"' in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_ship_data_needs_an_address(tmp_path):
    result = run_cli(["compress", *LENET_ARGS, "--ray-ship-data", "-o", tmp_path / "x.onnx"])
    assert result.exit_code == 4 and "--ray-ship-data needs --ray" in result.output


def test_runs_cover_the_blocks_in_order():
    from onnxprune.calibration.parallel import runs_of

    assert runs_of(0, 16, 2) == [(0, 8), (8, 16)]
    assert runs_of(3, 8, 4) == [(3, 4), (4, 5), (5, 6), (6, 8)]
    assert runs_of(0, 2, 8) == [(0, 1), (1, 2)]


def test_shipped_samples_read_like_the_data_set():
    import numpy as np

    from onnxprune.calibration.parallel import ShippedData
    from onnxprune.calibration.sources import InputSpec, open_data
    from onnxprune.compress import input_specs
    import onnx

    data = open_data(DIGITS, input_specs(onnx.load(str(LENET))))
    held = np.array([5, 2, 9, 40])
    shipped = ShippedData(data.path, data.inputs, len(data), held, data.load(held))
    for name, values in data.load([9, 2]).items():
        assert np.array_equal(shipped.load([9, 2])[name], values)
    with pytest.raises(IndexError, match="not shipped"):
        shipped.load([3])
    assert isinstance(shipped.inputs[0], InputSpec)
