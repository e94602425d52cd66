"""compressor.artifacts: weights never run code, NaN/Inf and truncated files are refused, and a
kill never leaves a truncated artifact that is read."""

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compressor import CompressorError
from compressor.artifacts import ArtifactWriter, load_artifact, load_state_dict
from compressor.models import create_model

from helpers import cli as _cli, one_line_error as _one_line_error

ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


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


def _write_forever(out: Path) -> None:
    model = create_model("convtiny", num_classes=10, in_chans=3)
    i = 0
    while True:
        with ArtifactWriter(out) as w:
            w.save_model(model, {"architecture": "convtiny", "num_classes": 10, "input_shape": [3, 16, 16],
                                 "kwargs": {}, "mean": [0.5] * 3, "std": [0.25] * 3})
            w.write_json("extra.json", {"i": i})
            w.commit({"accuracy": 0.5, "generation": i})
        i += 1


@pytest.mark.slow
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


def test_metrics_json_is_typed_per_stage(student_dir):
    """Every key a stage writes is declared with its type (compressor.stages.metrics): a written
    artifact's metrics validate, an undeclared key or a wrong type is refused before anything is written."""
    import json

    from compressor import CompressorError
    from compressor.stages.metrics import check_metrics

    written = json.loads((student_dir / "metrics.json").read_text())
    check_metrics("distill", written)
    with pytest.raises(CompressorError, match="bogus"):
        check_metrics("distill", {**written, "bogus": 1})
    with pytest.raises(CompressorError, match="accuracy"):
        check_metrics("distill", {**written, "accuracy": "high"})
