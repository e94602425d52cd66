import json

import pytest
import yaml
from typer.testing import CliRunner

from compressor import CompressorError
from compressor.cli.main import app
from compressor.recipe import load_recipe, parse_recipe, run_recipe



def test_all_recipe_problems_reported_at_once_with_dotted_paths():
    raw = {"name": "x", "colour": "red", "data": {"name": "synthetic", "rooot": "/x"},
           "stages": [{"teach": {"model": "convtiny", "epochs": -1}},
                      {"distill": {"student": "convtiny", "alpha": 2}},
                      {"prune": {"sparsity": 1.5}},
                      {"bake": {}}]}
    with pytest.raises(CompressorError) as e:
        parse_recipe(raw)
    msg = str(e.value)
    for needle in ("colour: unknown key", "data.rooot: unknown key", "stages.0.teach.epochs",
                   "stages.1.distill.alpha", "stages.2.prune.sparsity", "stages.3.bake: unknown stage"):
        assert needle in msg, msg
    assert "\n" not in msg


def test_stage_that_reads_what_nothing_wrote_is_refused():
    with pytest.raises(CompressorError, match="stages.0.prune: reads a model"):
        parse_recipe({"name": "x", "data": {"name": "synthetic"}, "stages": [{"prune": {"sparsity": 0.5}}]})
    with pytest.raises(CompressorError, match="stages.0.distill: needs a teacher"):
        parse_recipe({"name": "x", "data": {"name": "synthetic"}, "stages": [{"distill": {"student": "convtiny"}}]})


def test_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert recipes
    for r in recipes:
        load_recipe(r)


def test_run_recipe_end_to_end_with_summary(tmp_path):
    recipe = {"name": "tiny", "seed": 1, "device": "cpu", "data": {"name": "synthetic"},
              "stages": [{"teach": {"model": "convtiny", "epochs": 1}}, {"select": {"top_k": 8}},
                         {"distill": {"student": "convverytiny", "epochs": 1, "control": True}},
                         {"prune": {"sparsity": 0.5, "finetune_epochs": 1, "teacher": True}},
                         {"export": {"int8": True, "calibration_batches": 2, "runtime": "onnxruntime"}}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    for stage in ("teach", "select", "distill", "prune", "export"):
        assert (out / stage / "metrics.json").is_file()
        assert stage in res.stdout
    d = json.loads((out / "distill" / "metrics.json").read_text())
    assert "control_accuracy" in d and "gain_points" in d
    # every training loop's TensorBoard run lies under RUN_DIR/logs/<stage>/
    for stage, run in (("teach", "teach"), ("distill", "distill-kd"), ("distill", "control-alpha=1"),
                       ("prune", "prune-finetune")):
        assert list((out / "logs" / stage / run).glob("events.out.tfevents.*")), (stage, run)
    res = CliRunner().invoke(app, ["report", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    rows = rep["summary"]
    assert [r["stage"] for r in rows] == ["teach", "select", "distill", "prune", "export"]
    assert rows[-1]["latency_ms_int8"] > 0 and rows[-1]["zipped_bytes"] > 0
    # hard/soft accuracy: the same numbers the stages measured
    acc = {r["model"]: r for r in rep["accuracy"]}
    t = json.loads((out / "teach" / "metrics.json").read_text())
    assert acc["teacher"]["hard"] == pytest.approx(t["accuracy"]) and acc["teacher"]["soft"] == 1.0
    assert acc["distilled student"]["hard"] == pytest.approx(d["accuracy"])
    assert acc["distilled student"]["soft"] == pytest.approx(d["agreement"])
    assert acc["student alone"]["hard"] == pytest.approx(d["control_accuracy"])
    # the cross table partitions the test split; its "student right, teacher wrong" cells are the image grid
    cross = rep["cross"]
    assert len(cross) == 8 and sum(c["count"] for c in cross) == 400
    beat = sum(c["count"] for c in cross if c["cell"]["distilled student"] == "right" and c["cell"]["teacher"] == "wrong")
    assert rep["student_right_teacher_wrong"] == beat
    for c in cross:
        for v in c["mean_confidence"].values():
            assert v is None or 0.1 <= v <= 1.0  # at least 1/classes: it is the top probability
    md = (out / "report.md").read_text()
    for heading in ("hard and soft labels", "Right and wrong", "beats its teacher", "Learning curves", "Size and latency"):
        assert heading in md
    for png in ("images.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in md
    assert set(rep["curves"]) >= {"teach", "distill", "distill (student alone)", "prune"}
    res = CliRunner().invoke(app, ["report", str(out)])
    assert res.exit_code == 0 and "cross table" in res.stdout


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


def test_every_shipped_recipe_validates():
    from pathlib import Path

    from compressor.recipe import load_recipe

    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert len(recipes) >= 3
    for path in recipes:
        assert load_recipe(path).stages, path
