import json

import pytest
import yaml
from typer.testing import CliRunner

from compressor import CompressorError
from compressor.cli.main import app
from compressor.recipe import load_recipe, parse_recipe


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
                         {"export": {"int8": True, "calibration_batches": 2}}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    for stage in ("teach", "select", "distill", "prune", "export"):
        assert (out / stage / "metrics.json").is_file()
        assert stage in res.stdout
    d = json.loads((out / "distill" / "metrics.json").read_text())
    assert "control_accuracy" in d
    res = CliRunner().invoke(app, ["report", str(out), "--json"])
    rows = json.loads(res.stdout)
    assert [r["stage"] for r in rows] == ["teach", "select", "distill", "prune", "export"]
    assert rows[-1]["latency_ms_int8"] > 0 and rows[-1]["zipped_bytes"] > 0
