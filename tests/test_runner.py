import pytest
"""The stage runner's promises (compressor.stages.runner) and the hostile inputs of issue #10: each
ends in one line, a non-zero exit, no traceback, and the user's files untouched."""

import errno
import json
import subprocess
import sys
import time

from typer.testing import CliRunner

from compressor.cli.main import app

from helpers import SYN, cli_subprocess as _cli, one_stderr_line as _one_line


def _snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_out_equal_to_or_inside_an_input_is_refused_and_the_input_kept(workdir, student_dir):
    before = _snapshot(student_dir)
    for out in (student_dir, student_dir / "sub"):
        _one_line(_cli("prune", student_dir, "--data", "synthetic", "--sparsity", "0.5", "--out", out),
                  "input artifact")
    assert _snapshot(student_dir) == before and not (student_dir / "sub").exists()


def test_a_model_json_with_kwargs_the_architecture_rejects(tmp_path, student_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("model.safetensors", "metrics.json"):
        (bad / f).write_bytes((student_dir / f).read_bytes())
    spec = json.loads((student_dir / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**spec, "kwargs": {"wings": 2}}))
    _one_line(_cli("eval", bad, "--data", "synthetic"), "does not accept the arguments ['wings']")
    (bad / "model.json").write_text(json.dumps({**spec, "colour": "red"}))
    _one_line(_cli("eval", bad, "--data", "synthetic"), "colour: unknown field")


@pytest.mark.slow
def test_an_unreadable_image_is_named_in_one_line(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(d / f"{i}.png")
    (tmp_path / "imgs" / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "imgs" / "train" / "b" / "empty.png").write_bytes(b"")
    line = _one_line(_cli("teach", "--data", "imagefolder", "--data-root", tmp_path / "imgs", "--model", "convtiny",
                          "--quiet", "--out", tmp_path / "t"), "cannot read image")
    assert ("broken.jpg" in line or "empty.png" in line) and "remove or fix it" in line
    assert not (tmp_path / "t").exists()


def test_l2tww_trains_a_hard_swish_student_with_the_first_order_meta_gradient(tmp_path):
    """Acceptance: hard-swish has no double backward; l2tww falls back to finite differences."""
    from compressor.stages import distill, teach

    teacher = tmp_path / "t32"
    teach(data=SYN, model="convverytiny", image_size=32, epochs=1, train_size=256, out=teacher, device="cpu")
    m = distill(teacher=teacher, student="mobilenetv3_small_050", data=SYN, image_size=32, method="l2tww",
                epochs=1, train_size=256, out=tmp_path / "mnv3", device="cpu")
    assert m["cost"]["meta_gradient"].startswith("first-order") and m["cost"]["steps"] == 2
    assert (tmp_path / "mnv3" / "model.safetensors").is_file()


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path, teacher_dir, monkeypatch):
    """Acceptance: `--out` on a full file system (simulated: every atomic write fails with ENOSPC)."""
    import compressor.artifacts as artifacts
    import compressor.training.checkpoint as checkpoint

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(artifacts, "atomic_write_bytes", full)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    res = CliRunner().invoke(app, ["distill", "--teacher", str(teacher_dir), "--student", "convverytiny", "--data",
                                   "synthetic", "--epochs", "1", "--out", str(tmp_path / "t"), "--quiet"])
    assert res.exit_code == 1 and "No space left on device" in res.output and res.exception is not None
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no artifact, staging dir, checkpoint or lock


@pytest.mark.slow
def test_a_second_writer_of_the_same_out_is_refused_naming_the_first(tmp_path, student_dir):
    """Two processes, one --out: the second is refused in one line with the first's pid; the artifact
    the first writes is whole."""
    out = tmp_path / "p"
    args = ["prune", student_dir, "--data", "synthetic", "--sparsity", "0.5", "--finetune-epochs", "3", "--out", out]
    first = subprocess.Popen([sys.executable, "-m", "compressor.cli.main", *map(str, args), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / ".p.lock"
    deadline = time.time() + 60
    while not (lock.is_file() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    line = _one_line(_cli(*args), "being written by another compress process")
    assert f"pid {first.pid}" in line
    assert first.wait(timeout=300) == 0, first.stderr.read()
    from compressor.artifacts import load_artifact

    assert load_artifact(out).metrics["sparsity"] >= 0.5 and not lock.exists()
