"""`compress sweep`: a grid over the distill stage's settings, as the studies' temperature x alpha tables.

The stages before distill run once (and are skipped when unchanged and verified, as in `compress run`);
each grid point trains in its own directory `RUN/sweep/<key=value,...>/`, recorded in
`RUN/sweep/state.json` when it finishes, so a rerun (or a resumed, interrupted sweep) skips the
points already done. The teacher-output cache (`RUN/cache/`) is on by default: the first point fills
it and every later point reads the teacher's logits instead of running the teacher.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import yaml
from pydantic import ValidationError

from compressor import CompressorError
from compressor.artifacts import METRICS_FILE, atomic_write_bytes, atomic_write_json, read_json
from compressor.console import log
from compressor.recipe import (MODEL_STAGES, DistillCfg, Ledger, Recipe, first_key, named_stages, run_recipe,
                               run_stage, stage_key)
from compressor.tables import Table, fmt

SWEEP_DIR = "sweep"


def parse_grid(items: list[str]) -> dict[str, list]:
    """['distill.temperature=1,3,8', 'distill.alpha=0,0.5'] -> {'temperature': [1, 3, 8], 'alpha': [0, 0.5]}."""
    if not items:
        raise CompressorError("give at least one --grid distill.SETTING=V1,V2,...")
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        stage, dot, name = key.strip().partition(".")
        if not sep or not dot or not values.strip():
            raise CompressorError(f"--grid {item!r}: write it as distill.SETTING=V1,V2,... "
                                  "(e.g. distill.temperature=1,3,8)")
        if stage != "distill":
            raise CompressorError(f"--grid {item!r}: only the distill stage is swept (the stages before it run once)")
        if name not in DistillCfg.model_fields or name in ("control", "cache_teacher"):
            raise CompressorError(f"--grid {item!r}: distill has no setting '{name}' to sweep")
        if name in grid:
            raise CompressorError(f"--grid names distill.{name} twice")
        parsed = [yaml.safe_load(v.strip()) for v in values.split(",")]
        if len(set(map(str, parsed))) != len(parsed):
            raise CompressorError(f"--grid {item!r} repeats a value")
        grid[name] = parsed
    return grid


def point_name(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


def run_sweep(recipe: Recipe, out: str | Path, grid: dict[str, list], *, at_epochs: list[int] | None = None,
              cache_teacher: bool = True, device: str | None = None) -> dict:
    """Run the grid; return {"points": [...], "at_epochs": [...], "grid": grid} (also results.json)."""
    out = Path(out).expanduser()
    stages = named_stages(recipe)
    first = next((i for i, (_, kind, _) in enumerate(stages) if kind == "distill"), None)
    if first is None:
        raise CompressorError("the recipe has no distill stage to sweep")
    _, _, base = stages[first]
    epochs = max(at_epochs) if at_epochs else base.epochs
    at_epochs = sorted(set(at_epochs or [epochs]))
    if at_epochs[0] < 1:
        raise CompressorError(f"--at-epochs must be positive epoch numbers, got {at_epochs}")
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    cfgs, errors = [], []
    for point in points:  # validate every point before anything runs
        try:
            cfgs.append(DistillCfg.model_validate({**base.model_dump(exclude_unset=True), **point, "epochs": epochs,
                                                   "control": False, "cache_teacher": False}))
        except ValidationError as e:
            errors += [f"{point_name(point)}: {err['loc'][0]}: {err['msg']}" for err in e.errors()]
    if errors:
        raise CompressorError("the grid has invalid points: " + "; ".join(errors))

    prefix = recipe.stages[:first]
    upstream, paths, last_model = first_key(recipe), {}, None
    if prefix:
        rows = run_recipe(recipe.model_copy(update={"stages": prefix}), out, resume=True, device=device)
        upstream = rows[-1]["upstream"]
    for name, kind, cfg in stages[:first]:
        paths[kind] = out / name
        if kind in MODEL_STAGES:
            last_model = out / name

    sweep_dir = out / SWEEP_DIR
    sweep_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(sweep_dir / "state.json")
    rows = []
    for i, (point, cfg) in enumerate(zip(points, cfgs), 1):
        name, key = point_name(point), stage_key(upstream, "distill", cfg)
        point_dir = sweep_dir / name
        t0 = time.time()
        done = ledger.verified(name, key, point_dir) is not None
        if done:
            log(f"sweep {i}/{len(points)} {name}: finished earlier, skipped")
        else:
            log(f"sweep {i}/{len(points)} {name} -> {point_dir}")
            cached = cache_teacher and cfg.scheme == "offline"  # online/self teachers change or are absent
            run_stage("distill", cfg.model_copy(update={"cache_teacher": cached}), recipe, point_dir, paths,
                      last_model, device or recipe.device, out / "cache")
            ledger.record(name, key, point_dir)
        m = read_json(point_dir / METRICS_FILE)
        rows.append({"point": point, "dir": str(point_dir), "skipped": done, "seconds": round(time.time() - t0, 1),
                     "test_accuracy": m.get("accuracy"), "test_agreement": m.get("agreement"),
                     "teacher_cache": m.get("teacher_cache"),
                     "at": {str(e): best_until(m.get("history", []), e) for e in at_epochs}})
    result = {"grid": grid, "at_epochs": at_epochs, "epochs": epochs, "cache_teacher": cache_teacher,
              "points": rows}
    atomic_write_json(sweep_dir / "results.json", result)
    atomic_write_bytes(sweep_dir / "results.md", results_markdown(result).encode())
    heatmap(result, sweep_dir / "heatmap.png")
    return result


def best_until(history: list[dict], epoch: int) -> dict:
    """Best validation accuracy on hard labels and on the teacher's labels over epochs 1..epoch."""
    rows = [r for r in history if r["epoch"] <= epoch]
    hard = max((r["val_accuracy"] for r in rows), default=None)
    soft = max((r["val_agreement"] for r in rows if "val_agreement" in r), default=None)
    return {"hard": hard, "soft": soft}


def table_layout(result: dict) -> tuple[list[str], list, list[tuple], list]:
    """(row keys, row values, column key, column values): rows are every key but the last."""
    keys = list(result["grid"])
    col_key = keys[-1]
    row_keys = keys[:-1]
    row_vals = list(itertools.product(*(result["grid"][k] for k in row_keys))) or [()]
    return row_keys, row_vals, col_key, result["grid"][col_key]


def cell(result: dict, row: tuple, row_keys: list[str], col_key: str, col, epoch: int, kind: str):
    want = {**dict(zip(row_keys, row)), col_key: col}
    for p in result["points"]:
        if p["point"] == want:
            return p["at"][str(epoch)][kind]
    return None


def result_tables(result: dict) -> list[Table]:
    """The sweep's tables, built once: one per (epoch, hard/soft), rows every axis but the last."""
    row_keys, row_vals, col_key, col_vals = table_layout(result)
    tables = []
    for epoch in result["at_epochs"]:
        for kind, label in (("hard", "hard labels"), ("soft", "soft labels (the teacher's labels)")):
            t = Table([f"{' / '.join(row_keys) or '-'} \\ {col_key}"] + [str(c) for c in col_vals],
                      title=f"best validation accuracy by epoch {epoch}, {label}")
            for row in row_vals:
                t.add(", ".join(map(str, row)) or "-",
                      *(fmt(cell(result, row, row_keys, col_key, c, epoch, kind), "{:.4f}") for c in col_vals))
            tables.append(t)
    return tables


def results_markdown(result: dict) -> str:
    row_keys, _, col_key, _ = table_layout(result)
    lines = [f"# Sweep: best validation accuracy (rows {', '.join(row_keys) or '-'}, columns {col_key})", ""]
    lines += [t.markdown(heading="##") for t in result_tables(result)]
    lines.append("Each cell: the best validation accuracy over epochs 1..N of one run with the sweep's "
                 f"{result['epochs']}-epoch schedule. Per point: `sweep/<point>/metrics.json`.")
    return "\n".join(lines) + "\n"


def heatmap(result: dict, path: Path) -> None:
    import numpy as np

    from compressor.report import pyplot, save_png

    plt = pyplot()
    row_keys, row_vals, col_key, col_vals = table_layout(result)
    epochs = result["at_epochs"]
    fig, axes = plt.subplots(2, len(epochs), figsize=(1.2 + 1.1 * len(col_vals) * len(epochs),
                                                      1.6 + 1.4 * len(row_vals)), squeeze=False)
    for j, epoch in enumerate(epochs):
        for i, (kind, label) in enumerate((("hard", "hard labels"), ("soft", "teacher labels"))):
            ax = axes[i][j]
            grid = np.array([[cell(result, r, row_keys, col_key, c, epoch, kind) or np.nan for c in col_vals]
                             for r in row_vals], dtype=float)
            ax.imshow(grid, cmap="viridis", aspect="auto")
            for (a, b), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(b, a, f"{v:.3f}", ha="center", va="center", fontsize=8,
                            color="white" if v < np.nanmean(grid) else "black")
            ax.set_xticks(range(len(col_vals)), [str(c) for c in col_vals])
            ax.set_yticks(range(len(row_vals)), [", ".join(map(str, r)) or "-" for r in row_vals])
            ax.set_xlabel(col_key)
            ax.set_ylabel(", ".join(row_keys) or "")
            ax.set_title(f"epoch {epoch}: {label}", fontsize=9)
    fig.suptitle("best validation accuracy", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
