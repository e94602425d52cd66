"""Issue 6's promises: no code from checkpoints, no truncated artifact read, clean stops, exact
resume, idempotent recipes, divergence stops, and bad input caught before work starts."""

import gzip
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from compressor import CompressorError
from compressor.artifacts import ArtifactWriter, load_artifact, load_state_dict
from compressor.cli.main import app
from compressor.models import create_model
from compressor.recipe import parse_recipe, run_recipe
from compressor.stages import teach
from compressor.training import TrainConfig

from conftest import SYN

ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def _one_line_error(res, needle: str) -> str:
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:") and needle in lines[-1], res.output
    return lines[-1]


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# 1. A checkpoint cannot run code -------------------------------------------------------------


class _Payload:
    """Unpickling this would create a file: the classic pickle code-execution payload."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_pickle_with_a_code_payload_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(1), "x": _Payload(target)}, evil)
    assert not target.exists()
    res = _cli("teach", "--data", "synthetic", "--model", "convtiny", "--init", evil, "--out", tmp_path / "t")
    _one_line_error(res, "could not be read safely")
    assert not target.exists(), "the pickle payload ran"
    assert not (tmp_path / "t").exists()


def test_truncated_and_nan_weights_are_refused_with_tensor_names(tmp_path, teacher_dir):
    state = create_model("convtiny", num_classes=10, in_chans=3).state_dict()
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    _one_line_error(_cli("teach", "--data", "synthetic", "--model", "convtiny", "--init", truncated, "--out",
                         tmp_path / "a"), "corrupt")
    state["blocks.1.0.weight"] = torch.full_like(state["blocks.1.0.weight"], float("nan"))
    state["fc.bias"][3] = float("inf")
    nan = tmp_path / "nan.safetensors"
    save_file(state, str(nan))
    line = _one_line_error(_cli("teach", "--data", "synthetic", "--model", "convtiny", "--init", nan, "--out",
                                tmp_path / "b"), "NaN/Inf")
    assert "blocks.1.0.weight" in line and "fc.bias" in line
    pt = tmp_path / "nan.pt"
    torch.save(state, pt)
    _one_line_error(_cli("teach", "--data", "synthetic", "--model", "convtiny", "--init", pt, "--out",
                         tmp_path / "c"), "blocks.1.0.weight")
    art = tmp_path / "nan-artifact"
    shutil.copytree(teacher_dir, art)
    t = load_state_dict(art / "model.safetensors")
    t["fc.weight"][0, 0] = float("nan")
    save_file(t, str(art / "model.safetensors"))
    with pytest.raises(CompressorError, match="fc.weight"):
        load_artifact(art)
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())


# 2. A kill never leaves a truncated artifact that is read ------------------------------------


def _write_forever(out: Path) -> None:
    model = create_model("convtiny", num_classes=10, in_chans=3)
    i = 0
    while True:
        with ArtifactWriter(out) as w:
            w.save_model(model, {"architecture": "convtiny", "num_classes": 10, "input_shape": [3, 16, 16],
                                 "kwargs": {}})
            w.write_json("extra.json", {"i": i})
            w.commit({"accuracy": 0.5, "generation": i})
        i += 1


def test_sigkill_at_random_moments_leaves_a_complete_artifact_or_none(tmp_path):
    import multiprocessing as mp

    # children forked from a server that imported torch but never ran it (forking a process whose
    # thread pools are running can hang); each child rewrites the artifact until SIGKILL
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "compressor.artifacts", "compressor.models"])
    out = tmp_path / "art"
    rng = random.Random(0)
    seen_complete = 0
    for trial in range(20):
        child = ctx.Process(target=_write_forever, args=(out,))
        child.start()
        deadline = time.time() + 30
        while not out.exists() and trial == 0 and time.time() < deadline:
            time.sleep(0.01)  # the first trial starts killing once a first artifact exists
        time.sleep(rng.uniform(0.0, 0.3))
        child.kill()  # SIGKILL
        child.join()
        assert child.exitcode == -signal.SIGKILL
        if out.exists():
            art = load_artifact(out)  # complete: every file present and readable
            assert art.metrics["accuracy"] == 0.5 and art.model is not None
            assert (out / "extra.json").is_file()
            seen_complete += 1
        visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
        assert visible in ([], ["art"]), visible  # staging directories are hidden and never read
    assert seen_complete >= 15  # the old artifact survives kills that land mid-save
    with ArtifactWriter(out) as w:  # the next writer clears what killed writers left
        w.commit({})
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


# 3 + 4. Ctrl-C / SIGTERM stop cleanly; --resume is exact -----------------------------------------


def _teach_cmd(out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "compressor.cli.main", "teach", "--data", "synthetic", "--model", "convtiny",
            "--epochs", "3", "--lr", "0.05", "--out", str(out), *extra]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_teach_then_resume_gives_bit_identical_weights(tmp_path, sig):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_teach_cmd(out), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    lines = []
    for line in proc.stderr:  # wait until the first epoch is done, then stop it mid-run
        lines.append(line)
        if "teach epoch 1/3:" in line:
            time.sleep(0.3)
            proc.send_signal(sig)
            proc.send_signal(sig)  # a second signal changes nothing
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 128 + sig, "".join(lines) + rest
    err = [ln for ln in rest.splitlines() if ln.startswith("error:")]
    assert err and f"stopped by {signal.Signals(sig).name}" in err[0] and "--resume" in err[0], rest
    assert "Traceback" not in rest
    assert not out.exists()  # no half-written artifact
    ckpt = tmp_path / ".interrupted.checkpoint" / "main.pt"
    assert ckpt.is_file()
    resumed = subprocess.run(_teach_cmd(out, "--resume"), capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert not ckpt.parent.exists()  # removed once the artifact is committed
    straight = tmp_path / "straight"
    full = subprocess.run(_teach_cmd(straight), capture_output=True, text=True, env=ENV, timeout=300)
    assert full.returncode == 0, full.stderr
    a, b = load_state_dict(out / "model.safetensors"), load_state_dict(straight / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    _one_line_error(_cli("teach", "--data", "synthetic", "--model", "convtiny", "--out", tmp_path / "x", "--resume"),
                    "no checkpoint")
    assert not (tmp_path / "x").exists()


def _stop_at_check(n: int):
    """A StopSignals that reports SIGTERM at its n-th check (one check per step and per epoch end)."""
    import compressor.training as training

    class StopAtCheck(training.StopSignals):
        checks = 0

        @property
        def received(self):
            StopAtCheck.checks += 1
            return "SIGTERM" if StopAtCheck.checks >= n else None

        @received.setter
        def received(self, value):
            pass

    return StopAtCheck


def test_resume_in_process_mid_epoch_matches(tmp_path, monkeypatch):
    """The same promise without subprocesses: stop at a chosen step, resume, compare bit for bit."""
    import compressor.training as training

    cfg = TrainConfig(epochs=2, lr=0.05)
    teach(data=SYN, model="convverytiny", out=tmp_path / "straight", train=cfg, device="cpu")
    real = training.StopSignals
    monkeypatch.setattr(training, "StopSignals", _stop_at_check(40))  # 29 steps + 1 epoch end, then step 10
    with pytest.raises(CompressorError, match="stopped by SIGTERM at epoch 2 step 10"):
        teach(data=SYN, model="convverytiny", out=tmp_path / "resumed", train=cfg, device="cpu")
    monkeypatch.setattr(training, "StopSignals", real)
    teach(data=SYN, model="convverytiny", out=tmp_path / "resumed", train=cfg, device="cpu", resume=True)
    a = load_state_dict(tmp_path / "straight" / "model.safetensors")
    b = load_state_dict(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distill_with_control_resumes_in_its_second_loop(tmp_path, teacher_dir, monkeypatch):
    """Stopped while the control student trains: the distilled student's loop is restored from its own
    checkpoint, the control resumes mid-epoch; everything equals the uninterrupted run."""
    import compressor.training as training
    from compressor.stages import distill

    kw = dict(teacher=teacher_dir, student="convverytiny", data=SYN, train=TrainConfig(epochs=1, lr=0.05),
              control=True, device="cpu")
    straight = distill(out=tmp_path / "straight", **kw)
    real = training.StopSignals
    monkeypatch.setattr(training, "StopSignals", _stop_at_check(1))
    with pytest.raises(CompressorError, match="at epoch 1 step 1;"):
        distill(out=tmp_path / "resumed", **kw)  # the first loop already stops at its first check
    monkeypatch.setattr(training, "StopSignals", _stop_at_check(28 + 1 + 5))  # main: steps 2-29 + end; control: 5
    with pytest.raises(CompressorError, match="at epoch 1 step 5;"):
        distill(out=tmp_path / "resumed", resume=True, **kw)
    saved = torch.load(tmp_path / ".resumed.checkpoint" / "main.pt", weights_only=True)
    assert not any(k.startswith("teacher.") for k in saved["task"])  # the frozen teacher is not copied
    monkeypatch.setattr(training, "StopSignals", real)
    resumed = distill(out=tmp_path / "resumed", resume=True, **kw)
    assert resumed["accuracy"] == straight["accuracy"]
    assert resumed["control_accuracy"] == straight["control_accuracy"]
    for f in ("model.safetensors", "control.safetensors"):
        a, b = load_state_dict(tmp_path / "straight" / f), load_state_dict(tmp_path / "resumed" / f)
        assert all(torch.equal(a[k], b[k]) for k in a), f


# 5. Re-running a recipe is idempotent -----------------------------------------------------------


def _recipe(alpha: float):
    return parse_recipe({"name": "idem", "seed": 0, "device": "cpu", "data": {"name": "synthetic"},
                         "stages": [{"teach": {"model": "convtiny", "epochs": 1}},
                                    {"distill": {"student": "convverytiny", "epochs": 1, "alpha": alpha}},
                                    {"prune": {"sparsity": 0.5, "finetune_epochs": 1}}]}, "test")


def test_rerunning_a_recipe_skips_unchanged_stages_and_reruns_from_a_change(tmp_path):
    out = tmp_path / "run"
    first = run_recipe(_recipe(0.5), out)
    assert not any(r["skipped"] for r in first)
    again = run_recipe(_recipe(0.5), out)
    assert all(r["skipped"] for r in again)
    recipe = tmp_path / "r.yaml"  # the same through `compress run`
    recipe.write_text(yaml.safe_dump({"name": "idem", "seed": 0, "device": "cpu", "data": {"name": "synthetic"},
                                      "stages": [{"teach": {"model": "convtiny", "epochs": 1}},
                                                 {"distill": {"student": "convverytiny", "epochs": 1, "alpha": 0.5}},
                                                 {"prune": {"sparsity": 0.5, "finetune_epochs": 1}}]}))
    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(out)])
    assert res.exit_code == 0 and res.output.count("unchanged and verified, skipped") == 3, res.output
    changed = run_recipe(_recipe(0.3), out)
    assert [r["skipped"] for r in changed] == [True, False, False]  # distill and after rerun, teach does not
    # an artifact that no longer matches its record is rerun, with everything after it
    m = out / "distill" / "metrics.json"
    m.write_text(m.read_text().replace('"accuracy"', '"accuracy" ', 1))
    tampered = run_recipe(_recipe(0.3), out)
    assert [r["skipped"] for r in tampered] == [True, False, False]
    forced = run_recipe(_recipe(0.3), out, force=True)
    assert not any(r["skipped"] for r in forced)


# 6. Training that diverges stops ------------------------------------------------------------------


def test_divergence_stops_naming_stage_epoch_and_step(tmp_path):
    line = _one_line_error(_cli("teach", "--data", "synthetic", "--model", "convtiny", "--lr", "1e6", "--epochs", "2",
                                "--out", tmp_path / "t"), "non-finite")
    assert "teach:" in line and "epoch 1 step" in line
    assert not (tmp_path / "t").exists()


# 7. Bad input is caught before work starts --------------------------------------------------------


def test_bad_input_is_named_before_training(tmp_path, teacher_dir):
    five = create_model("convtiny", num_classes=5, in_chans=3).state_dict()
    init = tmp_path / "five.safetensors"
    save_file({k: v.contiguous() for k, v in five.items()}, str(init))
    line = _one_line_error(_cli("teach", "--data", "synthetic", "--model", "convtiny", "--init", init,
                                "--out", tmp_path / "a"), "--reinit-head")
    assert "5-class head" in line and "10 classes" in line
    res = _cli("teach", "--data", "synthetic", "--model", "convtiny", "--init", init, "--reinit-head", "--epochs", "1",
               "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    # labels outside the class range
    root = tmp_path / "fm"
    root.mkdir()
    for prefix, n in (("train", 20), ("t10k", 10)):
        images = bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(n * 28 * 28)
        labels = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes([i % 10 for i in range(n - 1)] + [12])
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    _one_line_error(_cli("teach", "--data", "fashion-mnist", "--data-root", root, "--model", "convtiny", "--out",
                         tmp_path / "b"), "label 12, outside 0..9")
    # an image size the model cannot take
    _one_line_error(_cli("teach", "--data", "synthetic", "--model", "vit_tiny_patch16_224", "--out", tmp_path / "c"),
                    "cannot take 3x16x16")
    # an empty dataset folder
    for split in ("train", "val"):
        (tmp_path / "empty" / split / "cat").mkdir(parents=True)
    _one_line_error(_cli("teach", "--data", "imagefolder", "--data-root", tmp_path / "empty", "--model", "convtiny",
                         "--out", tmp_path / "d"), "holds no images")
    # every recipe problem at once, including a stage that reads what nothing wrote
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata: {name: synthetic}\nstages:\n  - prune: {sparsity: 2}\n"
                      "  - distill: {student: convtiny}\n")
    line = _one_line_error(_cli("run", recipe, "--out", tmp_path / "run"), "problems")
    assert "stages.0.prune.sparsity" in line and "no earlier stage" in line and "needs a teacher" in line
    assert not any((tmp_path / n).exists() for n in ("b", "c", "d", "run"))
