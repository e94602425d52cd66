"""compress sweep: grid parsing, a shared upstream, resumable points, tables and heat-map."""

import pytest

import compressor.sweep as sweep_mod
from compressor import CompressorError
from compressor.recipe import parse_recipe
from compressor.sweep import parse_grid, run_sweep


def _recipe(teacher_dir):
    return parse_recipe({"name": "sw", "seed": 0, "data": {"name": "synthetic"},
                         "stages": [{"distill": {"student": "convverytiny", "teacher": str(teacher_dir),
                                                 "epochs": 2, "control": True}}]}, "test")


def test_parse_grid():
    assert parse_grid(["distill.temperature=1,3,8", "distill.alpha=0,0.5"]) == {"temperature": [1, 3, 8],
                                                                                  "alpha": [0, 0.5]}
    for bad, msg in [(["prune.sparsity=0.5"], "only the distill stage"), (["distill.nope=1"], "no setting"),
                     (["temperature=1"], "write it as"), (["distill.alpha=0.5,0.5"], "repeats"), ([], "at least")]:
        with pytest.raises(CompressorError, match=msg):
            parse_grid(bad)


def test_invalid_points_are_reported_before_anything_runs(teacher_dir, tmp_path):
    with pytest.raises(CompressorError, match="alpha=2.*alpha"):
        run_sweep(_recipe(teacher_dir), tmp_path, {"alpha": [0.5, 2]})
    assert not (tmp_path / "sweep").exists()


def test_interrupted_sweep_resumes_without_rerunning_finished_points(teacher_dir, tmp_path, monkeypatch):
    calls = []
    real = sweep_mod.run_stage

    def interrupted(kind, cfg, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the third point
        calls.append(cfg.temperature)
        return real(kind, cfg, *args)

    grid = {"temperature": [1, 4], "alpha": [0.5, 1]}
    monkeypatch.setattr(sweep_mod, "run_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_recipe(teacher_dir), tmp_path, grid, at_epochs=[1, 2])
    monkeypatch.setattr(sweep_mod, "run_stage", lambda kind, cfg, *a: (calls.append(cfg.temperature), real(kind, cfg, *a)))
    result = run_sweep(_recipe(teacher_dir), tmp_path, grid, at_epochs=[1, 2])
    assert calls == [1, 1, 4, 4]  # the two finished points were not trained again
    assert [p["skipped"] for p in result["points"]] == [True, True, False, False]
    again = run_sweep(_recipe(teacher_dir), tmp_path, grid, at_epochs=[1, 2])
    assert all(p["skipped"] for p in again["points"]) and len(calls) == 4
    for p in result["points"]:
        for e in ("1", "2"):
            assert 0 < p["at"][e]["hard"] <= 1 and 0 < p["at"][e]["soft"] <= 1
        assert p["at"]["2"]["hard"] >= p["at"]["1"]["hard"]  # best up to epoch 2 includes epoch 1
    caches = [p["teacher_cache"] for p in result["points"] if p["point"]["alpha"] < 1]
    assert caches[0]["misses"] > 0 and caches[0]["hits"] == 0  # the first point filled the cache,
    assert caches[1]["hits"] > 0 and caches[1]["misses"] == 0  # the next one read it
    md = (tmp_path / "sweep" / "results.md").read_text()
    assert "| temperature \\ alpha | 0.5 | 1 |" in md and "soft labels" in md
    png = (tmp_path / "sweep" / "heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # changing a setting outside the grid reruns every point
    changed = parse_recipe({"name": "sw", "seed": 0, "data": {"name": "synthetic"},
                            "stages": [{"distill": {"student": "convverytiny", "teacher": str(teacher_dir),
                                                    "epochs": 2, "lr": 0.02}}]}, "test")
    rerun = run_sweep(changed, tmp_path, grid, at_epochs=[1, 2])
    assert not any(p["skipped"] for p in rerun["points"])


def test_sweep_through_the_cli(teacher_dir, tmp_path):
    import json

    import yaml
    from typer.testing import CliRunner

    from compressor.cli.main import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "sw", "seed": 0, "device": "cpu", "data": {"name": "synthetic"},
                                      "stages": [{"distill": {"student": "convverytiny", "teacher": str(teacher_dir),
                                                              "epochs": 1}}]}))
    res = CliRunner().invoke(app, ["sweep", str(recipe), "--grid", "distill.alpha=0.5,1", "--out", str(tmp_path / "run"),
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert "hard labels" in res.output and "teacher's labels" in res.output and "- \\ alpha" in res.output
    res = CliRunner().invoke(app, ["sweep", str(recipe), "--grid", "distill.alpha=0.5,1", "--out", str(tmp_path / "run"),
                                   "--json", "--quiet"])
    assert res.exit_code == 0 and all(p["skipped"] for p in json.loads(res.stdout)["points"])
    res = CliRunner().invoke(app, ["sweep", str(recipe), "--grid", "distill.alpha=0.5", "--at-epochs", "x"])
    assert res.exit_code == 1 and "--at-epochs" in res.output
