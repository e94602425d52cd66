"""The commands that read recipes and runs: run, report and sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from compressor import CompressorError, distributed
from compressor.cli.commands import apply_runtime, guarded, stdout
from compressor.cli.options import JsonOpt, QuietOpt, RecipeArg, RecipeDeviceOpt, RunOutOpt, ThreadsOpt
from compressor.provenance import lineage_line
from compressor.recipe import load_recipe, run_recipe
from compressor.report import accuracy_table, cross_table, summary_rows, summary_table, write_report
from compressor.sweep import SWEEP_DIR, has_lambdas, parse_grid, result_tables, run_sweep


@guarded
def report(
    run_dir: Annotated[str, typer.Argument(help="A run directory written by `compress run`.")],
    json_: JsonOpt = False,
) -> None:
    """Write RUN_DIR/report.md (with images.png and curves.png) and print its tables.

    Tables: accuracy on hard labels and on the teacher's labels for teacher, student alone and
    distilled student; the right/wrong cross table with each model's mean confidence; the stage
    table (accuracy, params, zipped size, int8 and fp32 latency); the lineage of the last model
    (teacher to export). A run directory may be moved or copied: each artifact finds its inputs
    relative to itself.
    """
    rep = write_report(run_dir)
    if json_:
        print(json.dumps(rep, indent=2))
        return
    if rep["lineage"]:
        stdout.print(f"lineage: {lineage_line(rep['lineage'])}")
    if rep["accuracy"]:
        stdout.print(accuracy_table(rep["accuracy"]).rich())
        stdout.print(cross_table(rep["cross"], [r["model"] for r in rep["accuracy"]]).rich())
    stdout.print(summary_table(rep["summary"], str(run_dir)).rich())
    stdout.print(f"report: {rep['report']}")


@guarded
def run(
    recipe: RecipeArg,
    out: RunOutOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted stage (Ctrl-C, SIGTERM, a crash) from its checkpoint instead of starting it over.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Rerun every stage, even those whose inputs are unchanged and whose artifact verifies.")] = False,
    mlflow: Annotated[Optional[str], typer.Option("--mlflow", help="Also log every training stage to MLflow at this tracking URI (one MLflow run per training loop, experiment 'compressor'); needs pip install 'compressor\\[mlflow]'.")] = None,
    device: RecipeDeviceOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a recipe's stages in order (validated in full first) and print a summary table.

    Rerunning is idempotent: a stage whose inputs (upstream stages, data, seed, settings, code
    version) are unchanged and whose artifact still verifies is skipped; a change reruns that stage
    and every stage after it.
    """
    apply_runtime(quiet, threads)
    r = load_recipe(recipe)
    run_dir = Path(out or Path("runs") / r.name)
    run_recipe(r, run_dir, resume=resume, force=force, device=device, mlflow=mlflow)
    rows = summary_rows(run_dir)
    if not distributed.is_main():
        return
    if json_:
        print(json.dumps({"run_dir": str(run_dir), "stages": rows}, indent=2))
    else:
        stdout.print(summary_table(rows, f"{r.name}: {run_dir}").rich())


@guarded
def sweep(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML with a distill stage; the stages before it run once.")],
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="A distill setting and its values, e.g. distill.temperature=1,3,8; repeat for more axes (the last one gives the table's columns). With --random: values drawn from, or a range LO:HI drawn uniformly (distill.beta=0.1:0.9).")] = None,
    random: Annotated[Optional[int], typer.Option("--random", help="Instead of the grid, N points drawn at random from the --grid axes (study D); with vid, each point also draws its lambda matrix over the layer pairs from a Dirichlet (--concentration). A rerun with the same arguments skips the finished points.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="--random: seed of the draws (the same seed draws the same points).")] = 0,
    concentration: Annotated[float, typer.Option("--concentration", help="--random with vid: the Dirichlet's concentration for the lambda matrices (1: uniform over the simplex; smaller: fewer pairs weigh).")] = 1.0,
    at_epochs: Annotated[Optional[str], typer.Option("--at-epochs", help="Report the best validation accuracy up to these epochs, e.g. 10,20,50 (each point trains max(at-epochs) epochs; default: the recipe's distill epochs).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Run directory (default: runs/<recipe name>); points go to <out>/sweep/<point>/.")] = None,
    cache_teacher: Annotated[bool, typer.Option("--cache-teacher/--no-cache-teacher", help="Reuse the frozen teacher's outputs across points (offline distillation; default on).")] = True,
    device: RecipeDeviceOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a grid (or --random points) over the distill stage's settings; print and write the tables.

    Writes <out>/sweep/results.md, results.json and heatmap.png (a grid) or lambdas.png (random vid
    points: the best runs' lambda matrices). A rerun skips finished points.
    """
    apply_runtime(quiet, threads)
    epochs = None
    if at_epochs:
        try:
            epochs = [int(e) for e in at_epochs.split(",")]
        except ValueError:
            raise CompressorError(f"--at-epochs must be comma-separated integers, got '{at_epochs}'") from None
    if concentration <= 0:
        raise CompressorError(f"--concentration must be positive, got {concentration:g}")
    axes = parse_grid(grid or [], random=random is not None)
    r = load_recipe(recipe)
    run_dir = Path(out or Path("runs") / r.name)
    result = run_sweep(r, run_dir, axes, random=random, seed=seed, concentration=concentration, at_epochs=epochs,
                       cache_teacher=cache_teacher, device=device)
    if json_:
        print(json.dumps(result, indent=2))
        return
    for table in result_tables(result):
        stdout.print(table.rich())
    total = sum(p["seconds"] for p in result["points"])
    stdout.print(f"{len(result['points'])} points in {total:.0f} s "
                 f"({sum(p['skipped'] for p in result['points'])} finished earlier); "
                 f"{_written(result)} in {run_dir / SWEEP_DIR}")


def _written(result: dict) -> str:
    if "random" not in result:
        return "tables and heat-map"
    return "table and the best runs' lambda picture" if has_lambdas(result) else "table"
