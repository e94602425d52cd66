"""Acceptance of issue #11: every training stage and `compress run` under torchrun (2 processes,
gloo on this CPU): one artifact, progress printed once, test accuracy within 1 point of one process
with the same global batch; SIGTERM during a 2-process run, then --resume, completes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from compressor.recipe import load_recipe, run_recipe
from compressor.stages import distill, evaluate, prune, teach

pytestmark = pytest.mark.slow  # torchrun launches: seconds of start-up each


def torchrun(*args, cwd, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "compressor.cli.main", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def accuracy(artifact) -> float:
    return json.loads((artifact / "metrics.json").read_text())["accuracy"]


def check_once(res, tmp_path, out: str, progress: str) -> float:
    """Exit 0; progress and the summary printed once; exactly one artifact, nothing else written."""
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count(progress) == 1, res.stderr[-3000:]
    assert res.stdout.count("accuracy") == 1, res.stdout
    assert sorted(os.listdir(tmp_path)) == sorted([out, "cache"] if (tmp_path / "cache").exists() else [out])
    return accuracy(tmp_path / out)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "teach"
    teach(model="convtiny", data="synthetic", epochs=1, out=out, device="cpu")
    return out


def test_teach_under_torchrun_matches_one_process(tmp_path, teacher):
    res = torchrun("teach", "--data", "synthetic", "--model", "convtiny", "--epochs", "1", "--device", "cpu",
                   "--out", "t", cwd=tmp_path)
    acc = check_once(res, tmp_path, "t", "teach epoch 1/1:")
    assert abs(acc - accuracy(teacher)) <= 0.01
    # the test split was evaluated in two shares and gathered: the same as one process evaluating it
    assert abs(evaluate(tmp_path / "t", data="synthetic", device="cpu")["accuracy"] - acc) < 1e-6


def test_cached_distill_under_torchrun_fills_the_whole_cache(tmp_path, teacher):
    res = torchrun("distill", "--teacher", teacher, "--student", "convverytiny", "--data", "synthetic", "--epochs", "2",
                   "--cache-teacher", "--device", "cpu", "--out", "d", cwd=tmp_path)
    acc = check_once(res, tmp_path, "d", "distill[kd] epoch 2/2:")
    # one process, same cache: every batch of the teacher comes from what the two processes stored
    m = distill(teacher=teacher, student="convverytiny", data="synthetic", epochs=2, cache_teacher=True,
                cache_dir=tmp_path / "cache", out=tmp_path.parent / f"{tmp_path.name}-one", device="cpu")
    assert m["teacher_cache"]["misses"] == 0 and m["teacher_cache"]["hits"] > 0
    assert abs(acc - m["accuracy"]) <= 0.01


def test_prune_with_teacher_under_torchrun_matches_one_process(tmp_path, teacher):
    res = torchrun("prune", teacher, "--teacher", teacher, "--data", "synthetic", "--sparsity", "0.5",
                   "--device", "cpu", "--out", "p", cwd=tmp_path)
    acc = check_once(res, tmp_path, "p", "prune finetune epoch 1/1:")
    one = prune(teacher, teacher=teacher, data="synthetic", sparsity=0.5, device="cpu",
                out=tmp_path.parent / f"{tmp_path.name}-one")
    assert abs(acc - one["accuracy"]) <= 0.01


RECIPE = """name: ddp
seed: 0
device: cpu
data: {name: synthetic}
stages:
  - teach:   {model: convtiny, epochs: 1}
  - distill: {student: convtiny, epochs: 2, cache_teacher: true}
  - prune:   {sparsity: 0.5, teacher: true}
"""


def test_compress_run_under_torchrun_matches_one_process(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    res = torchrun("run", "r.yaml", "--out", "runs", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("prune finetune epoch 1/1: loss") == 1 and res.stdout.count("ddp: ") == 1, res.stdout
    run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "one")
    for stage in ("teach", "distill", "prune"):
        assert abs(accuracy(tmp_path / "runs" / stage) - accuracy(tmp_path / "one" / stage)) <= 0.01, stage
    assert not list((tmp_path / "runs").glob(".*"))  # no lock, checkpoint or partial artifact left


def test_sigterm_during_a_two_process_run_then_resume_completes(tmp_path):
    args = ("teach", "--data", "synthetic", "--model", "convtiny", "--image-size", "32", "--epochs", "3",
            "--device", "cpu", "--out", "s")
    proc = torchrun(*args, cwd=tmp_path, wait=False)
    ckpt = tmp_path / ".s.checkpoint" / "main.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), "no end-of-epoch checkpoint appeared"
    time.sleep(1.0)  # into epoch 2
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "stopped by SIGTERM" in err and "checkpoint saved" in err, err[-3000:]
    assert not (tmp_path / "s").exists() and ckpt.exists()
    res = torchrun(*args, "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stderr and res.stderr.count("teach epoch 3/3: loss") == 1  # the epoch's summary
    assert "teach epoch 1/3: loss" not in res.stderr  # epoch 1 is not trained again (progress lines, on a slow
    # machine, name the epoch too: the summaries are counted)
    assert accuracy(tmp_path / "s") > 0.9
    assert not ckpt.parent.exists()
