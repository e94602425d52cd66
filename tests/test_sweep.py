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


@pytest.mark.slow
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
            assert p["at"][e]["hard"] > 0.2 and p["at"][e]["soft"] > 0.2  # 10 classes: twice chance
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


@pytest.mark.slow
def test_random_vid_sweep_draws_lambdas_resumes_and_draws_them(teacher_dir, tmp_path, monkeypatch):
    """Study D: 8 random points of vid over all layer pairs, λ from a Dirichlet and β from a range."""
    import json

    import yaml
    from PIL import Image
    from typer.testing import CliRunner

    from compressor.cli.main import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "rs", "seed": 0, "device": "cpu", "data": {"name": "synthetic"},
                                      "stages": [{"distill": {"student": "convverytiny", "teacher": str(teacher_dir),
                                                              "method": "vid", "pairs": "all", "epochs": 1}}]}))
    args = ["sweep", str(recipe), "--random", "8", "--seed", "3", "--grid", "distill.beta=0.1:0.9",
            "--out", str(tmp_path / "run"), "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "run" / "sweep" / "results.json").read_text())
    points = result["points"]
    assert len(points) == 8 and not any(p["skipped"] for p in points)
    betas = [p["point"]["beta"] for p in points]
    assert all(0.1 <= b <= 0.9 for b in betas) and len(set(betas)) == 8
    for p in points:
        lam = p["point"]["lambdas"]
        assert len(lam) == 3 and all(len(r) == 3 for r in lam)  # 3 teacher x 3 student layers
        assert sum(map(sum, lam)) == pytest.approx(1, abs=1e-3) and min(map(min, lam)) >= 0
        recorded = json.loads((tmp_path / "run" / "sweep" / p["name"] / "model.json").read_text())["settings"]
        assert recorded["lambdas"] == lam and recorded["beta"] == p["point"]["beta"]
    calls = []
    monkeypatch.setattr(sweep_mod, "run_stage", lambda *a, **k: calls.append(a))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "run" / "sweep" / "results.json").read_text())
    assert calls == [] and all(p["skipped"] for p in again["points"])
    assert [p["point"] for p in again["points"]] == [p["point"] for p in points]  # the same draws
    png = tmp_path / "run" / "sweep" / "lambdas.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.size[0] > 800 and im.size[1] > 150 and len(set(im.convert("L").getdata())) > 10
    assert "lambdas.png" in (tmp_path / "run" / "sweep" / "results.md").read_text()


def test_random_axes_are_checked():
    assert parse_grid(["distill.beta=0.1:0.9"], random=True)["beta"] == sweep_mod.Range(0.1, 0.9)
    with pytest.raises(CompressorError, match="drawn from with --random"):
        parse_grid(["distill.beta=0.1:0.9"])
    with pytest.raises(CompressorError, match="low end is above"):
        parse_grid(["distill.beta=0.9:0.1"], random=True)
    a, b = sweep_mod.random_points({"beta": sweep_mod.Range(0, 1), "temperature": [1, 4]}, 5, 0), \
        sweep_mod.random_points({"beta": sweep_mod.Range(0, 1), "temperature": [1, 4]}, 3, 0)
    assert a[:3] == b and {p["temperature"] for _, p in a} <= {1, 4}


@pytest.mark.slow
def test_random_points_with_other_pairings_draw_lambdas_over_their_own_pairs(teacher_dir, tmp_path):
    """An axis that changes the layer pairs (matched or all): each point's λ weighs only its own pairs."""
    recipe = parse_recipe({"name": "rp", "seed": 0, "data": {"name": "synthetic"},
                           "stages": [{"distill": {"student": "convverytiny", "teacher": str(teacher_dir),
                                                   "method": "vid", "epochs": 1}}]}, "test")
    result = run_sweep(recipe, tmp_path, {"pairs": ["matched", "all"]}, random=4, seed=1)
    kinds = {p["point"]["pairs"] for p in result["points"]}
    assert kinds == {"matched", "all"}
    for p in result["points"]:
        lam = p["point"]["lambdas"]
        assert sum(map(sum, lam)) == pytest.approx(1, abs=1e-3)
        off = [lam[i][j] for i in range(3) for j in range(3) if i != j]
        if p["point"]["pairs"] == "matched":  # convtiny and convverytiny: stage j with stage j
            assert off == [0.0] * 6
        else:
            assert all(v > 0 for v in off)
    assert (tmp_path / "sweep" / "lambdas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
