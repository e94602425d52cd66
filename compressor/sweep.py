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
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from compressor import CompressorError
from compressor.artifacts import METRICS_FILE, atomic_write_bytes, atomic_write_json, load_artifact, read_json
from compressor.console import log
from compressor.distill import layer_pairs
from compressor.distill.vid import pair_grid
from compressor.models import create_model, size_kwargs
from compressor.recipe import (MODEL_STAGES, DistillCfg, Ledger, Recipe, first_key, named_stages, run_recipe, run_stage,
                               stage_key)
from compressor.report import pyplot, save_png
from compressor.tables import Table, fmt

SWEEP_DIR = "sweep"
LAMBDA_PNG = "lambdas.png"  # random vid sweeps: the best runs' λ matrices (study D's figure 7)


@dataclass(frozen=True)
class Range:
    """A --random axis drawn uniformly from [lo, hi] (written distill.SETTING=LO:HI)."""

    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.lo:g}:{self.hi:g}"


def parse_grid(items: list[str], *, random: bool = False) -> dict[str, list | Range]:
    """['distill.temperature=1,3,8', 'distill.alpha=0,0.5'] -> {'temperature': [1, 3, 8], 'alpha': [0, 0.5]}.

    With `random` (--random N), an axis may also be a range LO:HI, drawn uniformly; a list is then
    drawn from, each value equally likely."""
    if not items and not random:
        raise CompressorError("give at least one --grid distill.SETTING=V1,V2,... (or --random N)")
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
        if ":" in values:
            grid[name] = _range(item, values, random)
            continue
        parsed = [yaml.safe_load(v.strip()) for v in values.split(",")]
        if len(set(map(str, parsed))) != len(parsed):
            raise CompressorError(f"--grid {item!r} repeats a value")
        grid[name] = parsed
    return grid


def _range(item: str, values: str, random: bool) -> Range:
    if not random:
        raise CompressorError(f"--grid {item!r}: a range LO:HI is drawn from with --random N; a grid lists values")
    try:
        lo, hi = (float(v) for v in values.split(":"))
    except ValueError:
        raise CompressorError(f"--grid {item!r}: write a range as LO:HI, e.g. distill.beta=0.1:0.9") from None
    if not lo <= hi:
        raise CompressorError(f"--grid {item!r}: the range's low end is above its high end")
    return Range(lo, hi)


def random_points(grid: dict[str, list | Range], n: int, seed: int) -> list[tuple[str, dict]]:
    """n points (name, settings) drawn from the axes with numpy's generator seeded `seed`: the same
    arguments draw the same points (so a rerun finds them finished), and the first n of a larger n."""
    import numpy as np

    if n < 1:
        raise CompressorError(f"--random must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    points = []
    for i in range(1, n + 1):
        point = {}
        for name, axis in grid.items():
            if isinstance(axis, Range):
                point[name] = round(float(rng.uniform(axis.lo, axis.hi)), 4)
            else:
                point[name] = axis[int(rng.integers(len(axis)))]
        points.append((f"random{i:0{len(str(n))}d}", point))
    return points


def draw_lambdas(points: list[tuple[str, dict]], pairs: list[list[tuple[str, str]] | None], seed: int,
                 concentration: float) -> None:
    """Study D's λ: for each point with layer pairs (a vid point; None elsewhere), a matrix (teacher
    layers x student layers) drawn from a symmetric Dirichlet over its pairs (zero where two layers are
    not paired), added as `lambdas`."""
    import numpy as np

    rng = np.random.default_rng([seed, 1])  # its own stream: the other axes draw the same with or without λ
    for (_, point), point_pairs in zip(points, pairs):
        if point_pairs is None:
            continue
        rows, cols = pair_grid(point_pairs)
        w = rng.dirichlet(np.full(len(point_pairs), concentration))
        m = [[0.0] * len(cols) for _ in rows]
        for (t, s), v in zip(point_pairs, w):
            m[rows.index(t)][cols.index(s)] = round(float(v), 4)
        point["lambdas"] = m


def vid_pairs(cfg, teacher_dir) -> list[tuple[str, str]]:
    """The layer pairs vid will build for this distill config (read from the models, nothing trained)."""
    teacher = load_artifact(teacher_dir)
    spec = teacher.spec
    student = create_model(cfg.student, num_classes=spec.num_classes, in_chans=spec.input_shape[0],
                           **size_kwargs(cfg.student, spec.input_shape[-1]))
    return layer_pairs("vid", teacher.model, student, cfg.layers, cfg.pairs)


def point_name(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


def run_sweep(recipe: Recipe, out: str | Path, grid: dict[str, list | Range], *, random: int | None = None,
              seed: int = 0, concentration: float = 1.0, at_epochs: list[int] | None = None,
              cache_teacher: bool = True, device: str | None = None) -> dict:
    """Run the grid, or `random` points drawn from its axes (and, for vid, a λ matrix per point from a
    Dirichlet of `concentration`); return {"points": [...], "at_epochs": [...], "grid": grid} (also
    results.json)."""
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
    if random is None:
        if any(isinstance(axis, Range) for axis in grid.values()):
            raise CompressorError("a range LO:HI is drawn from with --random N; a grid lists values")
        named = [(point_name(p), p) for p in (dict(zip(grid, values)) for values in itertools.product(*grid.values()))]
    else:
        named = random_points(grid, random, seed)
    cfgs = _validated(base, named, epochs)  # every point before anything runs

    prefix = recipe.stages[:first]
    upstream, paths, last_model = first_key(recipe), {}, None
    if prefix:
        rows = run_recipe(recipe.model_copy(update={"stages": prefix}), out, resume=True, device=device)
        upstream = rows[-1]["upstream"]
    for name, kind, cfg in stages[:first]:
        paths[kind] = out / name
        if kind in MODEL_STAGES:
            last_model = out / name

    pairs = [None] * len(named)  # per point, the layer pairs its λ matrix weighs (random vid points)
    if random is not None and any(c.method == "vid" for c in cfgs):
        found: dict[tuple, list] = {}  # the models are read once per distinct (teacher, student, layers, pairs)

        def pairs_of(c):
            key = (str(c.teacher or paths.get("teach")), c.student, c.layers, c.pairs)
            if key not in found:
                found[key] = vid_pairs(c, key[0])
            return found[key]

        pairs = [pairs_of(c) if c.method == "vid" else None for c in cfgs]
        draw_lambdas(named, pairs, seed, concentration)
        cfgs = _validated(base, named, epochs)

    sweep_dir = out / SWEEP_DIR
    sweep_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(sweep_dir / "state.json")
    rows = []
    for i, ((name, point), cfg, point_pairs) in enumerate(zip(named, cfgs, pairs), 1):
        key = stage_key(upstream, "distill", cfg)
        point_dir = sweep_dir / name
        t0 = time.time()
        done = ledger.verified(name, key, point_dir) is not None
        if done:
            log(f"sweep {i}/{len(named)} {name}: finished earlier, skipped")
        else:
            log(f"sweep {i}/{len(named)} {name} -> {point_dir}")
            cached = cache_teacher and cfg.scheme == "offline"  # online/self teachers change or are absent
            run_stage("distill", cfg.model_copy(update={"cache_teacher": cached}), recipe, point_dir, paths,
                      last_model, device or recipe.device, out / "cache")
            ledger.record(name, key, point_dir)
        m = read_json(point_dir / METRICS_FILE)
        rows.append({"name": name, "point": point, "dir": str(point_dir), "skipped": done,
                     "seconds": round(time.time() - t0, 1),
                     "test_accuracy": m.get("accuracy"), "test_agreement": m.get("agreement"),
                     "teacher_cache": m.get("teacher_cache"),
                     "at": {str(e): best_until(m.get("history", []), e) for e in at_epochs}})
        if point_pairs is not None:  # the λ matrix's rows and columns, for the picture
            rows[-1]["lambda_layers"] = dict(zip(("teacher_layers", "student_layers"), pair_grid(point_pairs)))
    result = {"grid": {k: str(v) if isinstance(v, Range) else v for k, v in grid.items()}, "at_epochs": at_epochs,
              "epochs": epochs, "cache_teacher": cache_teacher, "points": rows}
    if random is not None:
        result.update({"random": random, "seed": seed, "concentration": concentration})
    atomic_write_json(sweep_dir / "results.json", result)
    if random is None:
        heatmap(result, sweep_dir / "heatmap.png")
    elif has_lambdas(result):
        lambda_picture(result, sweep_dir / LAMBDA_PNG)
    atomic_write_bytes(sweep_dir / "results.md", results_markdown(result).encode())
    return result


def _validated(base, named: list[tuple[str, dict]], epochs: int) -> list:
    cfgs, errors = [], []
    for name, point in named:
        try:
            cfgs.append(DistillCfg.model_validate({**base.model_dump(exclude_unset=True), **point, "epochs": epochs,
                                                   "control": False, "cache_teacher": False}))
        except ValidationError as e:
            errors += [f"{name}: {err['loc'][0]}: {err['msg']}" for err in e.errors()]
    if errors:
        raise CompressorError("the grid has invalid points: " + "; ".join(errors))
    return cfgs


def has_lambdas(result: dict) -> bool:
    """Whether the sweep drew λ matrices (random vid points): then it has a λ picture."""
    return any("lambda_layers" in p for p in result["points"])


def ranked(result: dict) -> list[dict]:
    """The points, best first: by best validation accuracy (hard labels) at the last reported epoch."""
    last = str(result["at_epochs"][-1])
    return sorted(result["points"], key=lambda p: -(p["at"][last]["hard"] or 0))


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
    """The sweep's tables, built once: one per (epoch, hard/soft), rows every axis but the last; for
    random points, one table of the points ranked."""
    if "random" in result:
        return [random_table(result)]
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


def random_table(result: dict) -> Table:
    axes = list(result["grid"])
    last = str(result["at_epochs"][-1])
    t = Table(["rank", "point", *axes, f"val acc (hard), epoch {last}", "val acc (soft)", "test acc"],
              title=f"{result['random']} random points (seed {result['seed']}), best first")
    for i, p in enumerate(ranked(result), 1):
        t.add(str(i), p["name"], *(str(p["point"][k]) for k in axes), fmt(p["at"][last]["hard"], "{:.4f}"),
              fmt(p["at"][last]["soft"], "{:.4f}"), fmt(p["test_accuracy"], "{:.4f}"))
    return t


def results_markdown(result: dict) -> str:
    if "random" in result:
        lines = [f"# Sweep: {result['random']} random points", "", random_table(result).markdown(heading="##")]
        if has_lambdas(result):
            lines += [f"![the λ matrices of the best runs]({LAMBDA_PNG})", "",
                      f"The λ of each layer pair drawn from a Dirichlet ({result['concentration']:g}) per point; the "
                      f"picture draws the best runs' matrices, line width = λ. Per point: `sweep/<point>/metrics.json`."]
        return "\n".join(lines) + "\n"
    row_keys, _, col_key, _ = table_layout(result)
    lines = [f"# Sweep: best validation accuracy (rows {', '.join(row_keys) or '-'}, columns {col_key})", ""]
    lines += [t.markdown(heading="##") for t in result_tables(result)]
    lines.append("Each cell: the best validation accuracy over epochs 1..N of one run with the sweep's "
                 f"{result['epochs']}-epoch schedule. Per point: `sweep/<point>/metrics.json`.")
    return "\n".join(lines) + "\n"


def heatmap(result: dict, path: Path) -> None:
    import numpy as np


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


def lambda_picture(result: dict, path: Path, best: int = 4) -> None:
    """Study D's figure 7: for each of the best runs with a λ matrix, teacher layers on the left,
    student layers on the right, a line per layer pair as wide as its λ."""
    plt = pyplot()
    runs = [p for p in ranked(result) if "lambda_layers" in p][:best]
    last = str(result["at_epochs"][-1])
    tallest = max(max(map(len, p["lambda_layers"].values())) for p in runs)
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 1.2 + 0.45 * tallest), squeeze=False)

    def ys(n: int) -> list[float]:
        return [1 - (i + 0.5) / n for i in range(n)]

    for ax, p in zip(axes[0], runs):
        teacher, student = p["lambda_layers"]["teacher_layers"], p["lambda_layers"]["student_layers"]
        lam, ty, sy = p["point"]["lambdas"], ys(len(teacher)), ys(len(student))
        for i, row in enumerate(lam):
            for j, v in enumerate(row):
                if v > 0:
                    ax.plot([0, 1], [ty[i], sy[j]], color="tab:blue", linewidth=0.3 + 12 * v, alpha=0.8,
                            solid_capstyle="round")
        ax.scatter([0] * len(ty), ty, color="black", zorder=3, s=12)
        ax.scatter([1] * len(sy), sy, color="black", zorder=3, s=12)
        for name, y in zip(teacher, ty):
            ax.text(-0.05, y, name, ha="right", va="center", fontsize=7)
        for name, y in zip(student, sy):
            ax.text(1.05, y, name, ha="left", va="center", fontsize=7)
        hard = p["at"][last]["hard"]
        ax.set_title(f"{p['name']}: val {hard:.4f}" if hard is not None else p["name"], fontsize=8)
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(0, 1)
        ax.axis("off")
    fig.suptitle("λ of the best runs: teacher layers (left), student layers (right), width = λ", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
