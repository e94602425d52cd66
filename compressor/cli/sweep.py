import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from compressor import CompressorError
from compressor.cli.common import apply_runtime, guarded, stdout
from compressor.cli.options import JsonOpt, QuietOpt, RecipeDeviceOpt, ThreadsOpt
from compressor.recipe import load_recipe
from compressor.sweep import SWEEP_DIR, has_lambdas, parse_grid, result_tables, run_sweep


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
