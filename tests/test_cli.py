"""The command line: options, summary, JSON report, and one-line errors that write nothing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from conftest import SAMPLES, write_calibration
from conftest import run_cli as run

LENET = SAMPLES / "lenet5_digits.onnx"
DIGITS = SAMPLES / "digits_calib.npz"


@pytest.fixture
def work(tmp_path) -> Path:
    shutil.copy(LENET, tmp_path / "lenet.onnx")
    return tmp_path



def assert_clean_failure(result, work: Path, code: int | None = None, text: str | None = None) -> None:
    """Non-zero exit, one line on stderr, no traceback, and no new files besides the inputs."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("onnxprune: error:")
    assert "Traceback" not in result.output
    if text:
        assert text in lines[0]
    leftovers = [p.name for p in work.iterdir() if p.name.endswith((".tmp", ".pruned.onnx")) or p.name == "out.onnx"]
    assert leftovers == []


def test_help_explains_every_option():
    result = run(["compress", "--help"])
    assert result.exit_code == 0
    for option in ("--target-flops", "--target-params", "--data", "--image-size", "--mean", "--std", "--layout",
                   "--bgr", "--raw-pixels", "--num-samples", "--holdout", "--max-positions", "--provider",
                   "--report", "--rho", "--tau", "--force", "-o, --output"):
        assert option in result.output
    assert "multiply-adds" in result.output and "0 < F <= 1" in result.output


def test_compress_default_output_summary_and_report(work):
    report = work / "r.json"
    result = run(["compress", work / "lenet.onnx", "--data", DIGITS, "--target-flops", "50%", "--report", report, "-q"])
    assert result.exit_code == 0, result.output
    out = work / "lenet.pruned.onnx"
    assert out.exists()
    doc = json.loads(report.read_text())
    assert doc["flops"]["after"] <= 0.5 * doc["flops"]["before"]
    assert doc["target"] == {"kind": "flops", "fraction": 0.5}
    assert doc["calibration_samples"] + doc["held_out_samples"] == len(np.load(DIGITS)["input"])
    assert doc["held_out_samples"] == round(0.1 * len(np.load(DIGITS)["input"]))
    # refuses to overwrite without --force, and keeps the existing file
    before = out.read_bytes()
    again = run(["compress", work / "lenet.onnx", "--data", DIGITS, "--target-flops", "0.5"])
    assert again.exit_code == 4 and "already exists" in again.stderr
    assert out.read_bytes() == before


def test_multiply_adds_in_the_cpus_blocks_beside_the_counted_ones(work, monkeypatch):
    """With the CPU's default counts the summary and report add the multiply-adds its convolutions compute (output
    channels in whole blocks); with exact counts (--round-to 1) they do not."""
    monkeypatch.setenv("ONNXPRUNE_CPU_BLOCK", "16")
    report = work / "r.json"
    result = run(["compress", work / "lenet.onnx", "--data", DIGITS, "--target-flops", "0.5", "-o", work / "o.onnx",
                  "--report", report])
    assert result.exit_code == 0, result.output
    assert "in blocks of 16" in result.stdout
    flops = json.loads(report.read_text())["flops"]
    blocks = flops["in_blocks"]
    assert blocks["block"] == 16 and blocks["before"] >= flops["before"] and blocks["after"] >= flops["after"]
    assert blocks["after"] / blocks["before"] > flops["after"] / flops["before"]   # LeNet's 6- and 16-channel convs
    exact = run(["compress", work / "lenet.onnx", "--data", DIGITS, "--target-flops", "0.5", "-o", work / "p.onnx",
                 "--report", report, "--round-to", "1", "--force"])
    assert exact.exit_code == 0 and "in blocks of" not in exact.stdout
    assert json.loads(report.read_text())["flops"]["in_blocks"] is None


def test_summary_table_printed(work):
    result = run(["compress", work / "lenet.onnx", "--data", DIGITS, "--target-params", "0.5", "-o", work / "o.onnx"])
    assert result.exit_code == 0, result.output
    for text in ("parameters", "multiply-adds", "file size", "fidelity", "time:", "->"):
        assert text in result.stdout


def test_few_samples_are_said_and_nothing_held_out_is_explained(work):
    data = _npz(work, input=np.load(DIGITS)["input"][:1])
    result = run(["compress", work / "lenet.onnx", "--data", data, "--target-flops", "0.5", "-o", work / "o.onnx"])
    assert result.exit_code == 0, result.output
    assert "samples: 1 calibrated on, 0 held out" in result.stdout
    assert "fidelity: not measured: no held-out samples" in result.stdout
    assert "only 1 calibration sample(s)" in result.output
    plenty = run(["compress", work / "lenet.onnx", "--data", DIGITS, "--target-flops", "0.5", "-o", work / "p.onnx"])
    assert "calibration sample(s)" not in plenty.output


def test_analyze_lists_groups(work):
    result = run(["analyze", SAMPLES / "chains" / "h_blocked.onnx"])
    assert result.exit_code == 0
    assert "Softmax 'softmax'" in result.output and "frozen:" in result.output
    assert "of MACs" in result.output


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated"])
def test_bad_model(work, case):
    model = work / "bad.onnx"
    if case == "garbage":
        model.write_bytes(b"\x08\x07garbage" * 50)
    elif case == "truncated":
        model.write_bytes(LENET.read_bytes()[:5000])
    result = run(["compress", model, "--data", DIGITS, "-o", work / "out.onnx"])
    assert_clean_failure(result, work, code=2)


def _npz(work: Path, **arrays) -> Path:
    path = work / "d.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case,text", [
    ("missing", "does not exist"),
    ("empty", None),
    ("wrong_shape", None),
    ("unknown_name", None),
    ("nan", None),
    ("integer", None),
])
def test_bad_data(work, case, text):
    if case == "missing":
        data = work / "nothing_here"
    elif case == "empty":
        data = work / "empty"
        data.mkdir()
    elif case == "wrong_shape":
        data = _npz(work, input=np.zeros((4, 1, 28, 28), np.float32))
    elif case == "unknown_name":
        data = _npz(work, pixels=np.zeros((4, 1, 32, 32), np.float32))
    elif case == "nan":
        data = _npz(work, input=np.full((4, 1, 32, 32), np.nan, np.float32))
    else:
        data = _npz(work, input=np.zeros((4, 1, 32, 32), np.int64))
    result = run(["compress", work / "lenet.onnx", "--data", data, "-o", work / "out.onnx"])
    assert_clean_failure(result, work, code=3, text=text)


def test_unreadable_image(work):
    folder = work / "imgs" / "cls"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 32), i * 40, np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    result = run(["compress", work / "lenet.onnx", "--data", work / "imgs", "-o", work / "out.onnx", "--holdout", "0"])
    assert_clean_failure(result, work, code=3, text="broken.png")


def test_images_calibrate(work):
    folder = work / "imgs"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / c / f"{i}.jpg")
    result = run(["compress", work / "lenet.onnx", "--data", folder, "-o", work / "o.onnx", "--target-flops", "0.7",
                  "--mean", "0.5", "--std", "0.25", "-q"])
    assert result.exit_code == 0, result.output
    assert (work / "o.onnx").exists()


@pytest.mark.parametrize("args,text", [
    (["--target-flops", "0"], "(0, 1]"),
    (["--target-flops", "1.5"], "(0, 1]"),
    (["--target-params", "abc"], "fraction"),
    (["--target-flops", "0.5", "--target-params", "0.5"], "either"),
    (["--holdout", "1.0"], "--holdout"),
    (["--ridge", "lots"], "--ridge"),
    (["--bogus"], "No such option"),            # click's own checks: one line and exit 4 like ours
    (["--num-samples", "-3"], "--num-samples"),
])
def test_bad_options(work, args, text):
    result = run(["compress", work / "lenet.onnx", "--data", DIGITS, "-o", work / "out.onnx", *args])
    assert_clean_failure(result, work, code=4, text=text)


def test_bad_output_paths(work):
    model = work / "lenet.onnx"
    same = run(["compress", model, "--data", DIGITS, "-o", model, "--force"])
    assert_clean_failure(same, work, code=4, text="never overwrites")
    assert model.read_bytes() == LENET.read_bytes()
    nofolder = run(["compress", model, "--data", DIGITS, "-o", work / "no" / "such" / "dir.onnx"])
    assert_clean_failure(nofolder, work, code=4, text="does not exist")
    folder = run(["compress", model, "--data", DIGITS, "-o", work])
    assert_clean_failure(folder, work, code=4, text="is a directory")


def test_out_of_memory_is_one_line_and_exit_6(work, monkeypatch):
    from onnxprune import compress as compress_module

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(compress_module, "first_pass", exhausted)
    result = run(["compress", work / "lenet.onnx", "--data", DIGITS, "-o", work / "out.onnx", "--target-flops", "0.5"])
    assert_clean_failure(result, work, code=6, text="out of memory")


def test_unwritable_output_folder_is_refused_before_any_work(work, monkeypatch):
    """Tried by creating a file, not read from permission bits (root passes those on a read-only mount)."""
    import tempfile

    from onnxprune import compress as compress_module

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(compress_module, "load_inputs", lambda *a, **k: pytest.fail("calibration data was read"))
    result = run(["compress", work / "lenet.onnx", "--data", DIGITS, "-o", work / "out.onnx", "--target-flops", "0.5"])
    assert_clean_failure(result, work, code=4, text="Read-only file system")
    assert "cannot write to the folder of -o" in result.stderr


def test_a_failing_write_is_one_line_and_leaves_nothing(work, monkeypatch):
    """A full disk while the model is written: exit 4 naming the file, no temporary left behind."""
    import onnx

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", disk_full)
    result = run(["compress", work / "lenet.onnx", "--data", DIGITS, "-o", work / "out.onnx", "--target-flops", "0.5"])
    assert_clean_failure(result, work, code=4, text="No space left on device")
    assert f"cannot write '{work / 'out.onnx'}'" in result.stderr


def test_unreachable_target(work):
    model = SAMPLES / "chains" / "h_blocked.onnx"
    data = write_calibration(model, work)
    result = run(["compress", model, "--data", data, "--target-flops", "0.05", "-o", work / "out.onnx"])
    assert_clean_failure(result, work, code=4, text="cannot be reached")
    assert "at best" in result.stderr
