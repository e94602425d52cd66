import json
import shutil

import pytest
from typer.testing import CliRunner

import gzip

from safetensors.torch import save_file

from compressor.cli.main import app
from compressor.models import create_model

from helpers import cli as _cli_in_process, cli_subprocess as _cli, one_line_error as _one_line_error, \
    one_stderr_line as _assert_one_line_error

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_every_command_has_help():
    for cmd in ("teach", "select", "distill", "prune", "export", "eval", "run", "report", "sweep"):
        out = invoke(cmd, "--help").output
        assert "--help" in out and "Usage" in out
        text = " ".join(line.strip(" │") for line in out.splitlines())
        assert "install 'compressor'" not in text  # an extra's name kept, not read as markup: 'compressor[mlflow]'
    narrow = CliRunner().invoke(app, ["export", "--help"], terminal_width=80)
    text = " ".join(line.strip(" │") for line in narrow.output.splitlines())
    # the docstring reflowed to the terminal's width: no line of it broken twice (a word alone on a line)
    lines = [line.strip() for line in narrow.output.split("╭")[0].splitlines()]
    assert all(len(line) > 20 or line.endswith((".", ")")) or not line for line in lines[3:]), lines
    # the settings it names are the flags a CLI user types
    assert "the form fastest on it within `--max-drop` points" in text and "`max_drop`" not in text


@pytest.mark.slow
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
    # on one test split, two models that are each right on a and b of the images agree on at least
    # a + b - 1 of them and at most 1 - |a - b|
    a, b = m["accuracy"], json.loads((t / "metrics.json").read_text())["accuracy"]
    assert a + b - 1 - 1e-6 <= m["agreement"] <= 1 - abs(a - b) + 1e-6


@pytest.mark.slow
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


@pytest.mark.slow
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

    from compressor.models import ModelSpec

    spec = ModelSpec.read(json.loads((student_dir / "model.json").read_text()), "model.json")
    with pytest.raises(CompressorError, match="3-channel images but data 'fashion-mnist' has 1"):
        check_data_matches(spec, _one_channel())
    with pytest.raises(CompressorError, match="7 classes but data 'synthetic' has 10"):
        check_data_matches(spec.model_copy(update={"num_classes": 7}), load_data("synthetic"))


def _one_channel():
    from compressor.data import load_data

    d = load_data("synthetic")
    d.name = "fashion-mnist"
    d.train.images = d.train.images[:, :1]
    return d


def test_the_cli_builds_the_library_config_of_every_method_and_scheme(tmp_path):
    """Every method and scheme trains in tests/test_methods.py through the library; here the CLI is
    checked to build the very config the library does (settings and which options count as given)."""
    import typer

    from compressor.cli.commands import config_from_options
    from compressor.cli.main import app
    from compressor.config import DistillConfig
    from compressor.distill import METHOD_NAMES

    command = typer.main.get_command(app).commands["distill"]
    online = {"chunk_size": 900, "buffer_chunks": 2, "epochs_per_buffer": 1, "distill_after": 1}
    cases = [(m, "offline", {}) for m in METHOD_NAMES] + [("kd", "online", online), ("kd", "self", {}),
                                                         ("vid", "offline", {"pairs": "all", "beta": 0.3})]
    for method, scheme, extra in cases:
        library = {"teacher": "T", "student": "convverytiny", "data": "synthetic", "method": method,
                   "scheme": scheme, "epochs": 1, "out": str(tmp_path / "s"), **extra}
        argv = [x for k, v in library.items() for x in ("--" + k.replace("_", "-"), str(v))]
        cli_cfg = config_from_options(DistillConfig, command.make_context("distill", argv).params)
        lib_cfg = DistillConfig.make(**library)
        assert cli_cfg.settings() == lib_cfg.settings(), (method, scheme)
        defaults = DistillConfig.model_fields
        given = {k for k in lib_cfg.model_fields_set if library[k] != defaults[k].default}  # the CLI: what differs
        assert cli_cfg.model_fields_set == given, (method, scheme)


@pytest.mark.slow
def test_distill_through_the_cli_is_the_library_run(teacher_dir, tmp_path):
    r = invoke("distill", "--teacher", teacher_dir, "--student", "convverytiny", "--data", "synthetic",
               "--epochs", "1", "--out", tmp_path / "s", "--quiet", "--json")
    m = json.loads(r.stdout)
    from compressor.stages import distill

    lib = distill(teacher=teacher_dir, student="convverytiny", data="synthetic", epochs=1, out=tmp_path / "lib")
    assert m["accuracy"] == lib["accuracy"] and m["agreement"] == lib["agreement"]  # bit for bit


@pytest.mark.slow
def test_bad_input_is_named_before_training(tmp_path, teacher_dir):
    five = create_model("convtiny", num_classes=5, in_chans=3).state_dict()
    init = tmp_path / "five.safetensors"
    save_file({k: v.contiguous() for k, v in five.items()}, str(init))
    line = _one_line_error(_cli_in_process("teach", "--data", "synthetic", "--model", "convtiny", "--init", init,
                                "--out", tmp_path / "a"), "--reinit-head")
    assert "5-class head" in line and "10 classes" in line
    res = _cli_in_process("teach", "--data", "synthetic", "--model", "convtiny", "--init", init, "--reinit-head", "--epochs", "1",
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
    _one_line_error(_cli_in_process("teach", "--data", "fashion-mnist", "--data-root", root, "--model", "convtiny", "--out",
                         tmp_path / "b"), "label 12, outside 0..9")
    # an image size the model cannot take
    _one_line_error(_cli_in_process("teach", "--data", "synthetic", "--model", "inception_v3", "--out", tmp_path / "c"),
                    "cannot take 3x16x16")
    # an empty dataset folder
    for split in ("train", "val"):
        (tmp_path / "empty" / split / "cat").mkdir(parents=True)
    _one_line_error(_cli_in_process("teach", "--data", "imagefolder", "--data-root", tmp_path / "empty", "--model", "convtiny",
                         "--out", tmp_path / "d"), "holds no images")
    # every recipe problem at once, including a stage that reads what nothing wrote
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata: {name: synthetic}\nstages:\n  - prune: {sparsity: 2}\n"
                      "  - distill: {student: convtiny}\n")
    line = _one_line_error(_cli_in_process("run", recipe, "--out", tmp_path / "run"), "problems")
    assert "stages.0.prune.sparsity" in line and "no earlier stage" in line and "needs a teacher" in line
    assert not any((tmp_path / n).exists() for n in ("b", "c", "d", "run"))


def test_every_option_is_derived_from_its_stage_config():
    """One definition per setting: each config field is a CLI option (or argument) with its help, and a
    recipe key unless it names an input or a place to write."""
    from compressor.config import STAGE_CONFIGS, field_extra
    from compressor.recipe import STAGES

    for kind, config in STAGE_CONFIGS.items():
        help_text = runner.invoke(app, [kind, "--help"], env={"COLUMNS": "300"}).output
        for name, info in config.model_fields.items():
            extra = field_extra(info)
            if not extra.get("argument"):
                assert config.flag_of(name) in help_text, (kind, name)
            assert info.description, (kind, name)
            public = info.alias or name
            assert (public in STAGES[kind].model_fields) == extra.get("recipe", True), (kind, name)


def test_plain_progress_lines_for_logs_are_few_and_none_repeats_a_step(monkeypatch, capsys):
    """Without a terminal, progress is at most about ten lines a task, one per tenth, the last at 100 %;
    a task that first prints at 59 % does not print 60 % next."""
    from compressor import console

    clock = iter(range(0, 10_000, 1))
    monkeypatch.setattr(console.time, "time", lambda: float(next(clock)))
    task = console._PlainTask("work", 100)
    for _ in range(100):
        task.advance()
    pcts = [int(line.split("(")[1].split("%")[0]) for line in capsys.readouterr().err.splitlines()]
    assert pcts[0] < 20 and pcts[-1] == 100 and len(pcts) <= 11, pcts
    assert all(b - a >= 5 for a, b in zip(pcts, pcts[1:])), pcts
    clock = iter([0.0] + [0.0] * 58 + [6.0 + i for i in range(100)])
    task = console._PlainTask("late", 100)
    for _ in range(100):
        task.advance()
    assert [int(line.split("(")[1].split("%")[0]) for line in capsys.readouterr().err.splitlines()][:2] == [59, 70]
