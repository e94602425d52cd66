import json
from typing import Annotated

import typer

from compressor.cli.common import command, stdout
from compressor.cli.options import JsonOpt
from compressor.report import summary_rows, summary_table


@command()
def report(
    run_dir: Annotated[str, typer.Argument(help="A run directory written by `compress run`.")],
    json_: JsonOpt = False,
) -> None:
    """Summarize a run: accuracy, params, zipped size and latency of every stage."""
    rows = summary_rows(run_dir)
    if json_:
        print(json.dumps(rows, indent=2))
    else:
        stdout.print(summary_table(rows, str(run_dir)))
