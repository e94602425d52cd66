import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from compressor import distributed
from compressor.cli.common import apply_runtime, guarded, stdout
from compressor.cli.options import JsonOpt, QuietOpt, RecipeArg, RecipeDeviceOpt, RunOutOpt, ThreadsOpt
from compressor.recipe import load_recipe, run_recipe
from compressor.report import summary_rows, summary_table


@guarded
def run(
    recipe: RecipeArg,
    out: RunOutOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted stage (Ctrl-C, SIGTERM, a crash) from its checkpoint instead of starting it over.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Rerun every stage, even those whose inputs are unchanged and whose artifact verifies.")] = False,
    mlflow: Annotated[Optional[str], typer.Option("--mlflow", help="Also log every training stage to MLflow at this tracking URI (one MLflow run per training loop, experiment 'compressor'); needs pip install 'compressor[mlflow]'.")] = None,
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
