import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from compressor.cli.main import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_every_command_has_help():
    for cmd in ("teach", "select", "distill", "prune", "export", "eval", "run", "report", "sweep"):
        out = invoke(cmd, "--help").output
        assert "--help" in out and "Usage" in out


def test_stages_through_the_cli(tmp_path):
    t, s, d, p, e = (tmp_path / n for n in ("t", "s", "d", "p", "e"))
    invoke("teach", "--data", "synthetic", "--model", "convtiny", "--epochs", "1", "--out", t, "--quiet", "--device", "cpu")
    invoke("select", t, "--data", "synthetic", "--top-k", "8", "--out", s, "--quiet")
    r = invoke("distill", "--teacher", t, "--student", "convverytiny", "--data", "synthetic", "--method", "kd",
               "--temperature", "4", "--alpha", "0.5", "--channels", s, "--epochs", "1", "--out", d, "--quiet", "--json")
    m = json.loads(r.stdout)
    assert {"accuracy", "agreement", "teacher_accuracy", "params"} <= set(m)
    invoke("prune", d, "--data", "synthetic", "--sparsity", "0.5", "--finetune-epochs", "1", "--teacher", t, "--out", p, "--quiet")
    r = invoke("export", p, "--data", "synthetic", "--onnx", "--int8", "--calibration-batches", "2", "--out", e, "--quiet")
    assert "int8" in r.stdout
    r = invoke("eval", e / "model.int8.onnx", "--data", "synthetic", "--teacher", t, "--json", "--quiet")
    m = json.loads(r.stdout)
    assert m["accuracy"] == pytest.approx(json.loads((e / "metrics.json").read_text())["accuracy_int8"])
    assert 0 <= m["agreement"] <= 1


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "compressor.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def _assert_one_line_error(res, must_contain: str):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert must_contain in lines[0], lines[0]


def test_bad_inputs_give_one_clear_line_and_leave_nothing(tmp_path, teacher_dir, student_dir):
    out = tmp_path / "out"
    cases = [
        (["teach", "--data", "fashion-mnist", "--data-root", tmp_path / "missing", "--model", "convtiny", "--out", out],
         "does not exist"),
        (["distill", "--teacher", tmp_path / "no-teacher", "--student", "convtiny", "--data", "synthetic", "--out", out],
         "no-teacher"),
        (["prune", student_dir, "--data", "synthetic", "--sparsity", "1.5", "--out", out], "1.5"),
        (["distill", "--teacher", teacher_dir, "--student", "convtiny", "--data", "synthetic", "--method", "magic",
          "--out", out], "magic"),
    ]
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\ndata: {name: synthetic}\nstages:\n  - teach: {model: convtiny, epochz: 1}\n")
    cases.append((["run", recipe, "--out", out], "stages.0.teach.epochz"))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(student_dir, corrupt)
    blob = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    cases.append((["export", corrupt, "--data", "synthetic", "--int8", "--out", out], "corrupt"))
    for args, needle in cases:
        res = _cli(*args)
        _assert_one_line_error(res, needle)
        assert not out.exists(), f"{args[0]} left {out} behind"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "staging directory left behind"


def test_impossible_combinations_are_refused(teacher_dir, student_dir, tmp_path):
    res = _cli("distill", "--teacher", teacher_dir, "--student", "convtiny", "--data", "synthetic", "--method", "at",
               "--scheme", "online", "--out", tmp_path / "x")
    _assert_one_line_error(res, "--scheme offline")
    res = _cli("prune", student_dir, "--data", "synthetic", "--sparsity", "0.5", "--structured", "--importance",
               "discriminability", "--out", tmp_path / "y")
    _assert_one_line_error(res, "--channels")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_data_that_does_not_fit_the_model_is_named(student_dir, tmp_path):
    from compressor import CompressorError
    from compressor.data import load_data
    from compressor.stages.common import check_data_matches

    spec = json.loads((student_dir / "model.json").read_text())
    with pytest.raises(CompressorError, match="3-channel images but data 'fashion-mnist' has 1"):
        check_data_matches(spec, _one_channel())
    with pytest.raises(CompressorError, match="7 classes but data 'synthetic' has 10"):
        check_data_matches({**spec, "num_classes": 7}, load_data("synthetic"))


def _one_channel():
    from compressor.data import load_data

    d = load_data("synthetic")
    d.name = "fashion-mnist"
    d.train.images = d.train.images[:, :1]
    return d


@pytest.mark.parametrize("method,scheme", [(m, "offline") for m in
                                           __import__("compressor.distill", fromlist=["METHOD_NAMES"]).METHOD_NAMES]
                         + [("kd", "online"), ("kd", "self")])
def test_distill_every_method_and_scheme_through_the_cli(method, scheme, teacher_dir, tmp_path):
    extra = ["--chunk-size", "900", "--buffer-chunks", "2", "--epochs-per-buffer", "1", "--distill-after", "1"] \
        if scheme == "online" else []
    r = invoke("distill", "--teacher", teacher_dir, "--student", "convverytiny", "--data", "synthetic", "--method", method,
               "--scheme", scheme, "--epochs", "1", "--out", tmp_path / "s", "--quiet", "--json", *extra)
    m = json.loads(r.stdout)
    assert m["accuracy"] > 0.2 and "agreement" in m
