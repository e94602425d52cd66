import json
from typing import Annotated

import typer
from compressor.cli.common import guarded, stdout
from compressor.cli.options import JsonOpt
from compressor.report import accuracy_table, cross_table, summary_table, write_report


@guarded
def report(
    run_dir: Annotated[str, typer.Argument(help="A run directory written by `compress run`.")],
    json_: JsonOpt = False,
) -> None:
    """Write RUN_DIR/report.md (with images.png and curves.png) and print its tables.

    Tables: accuracy on hard labels and on the teacher's labels for teacher, student alone and
    distilled student; the right/wrong cross table with each model's mean confidence; the stage
    table (accuracy, params, zipped size, int8 and fp32 latency).
    """
    rep = write_report(run_dir)
    if json_:
        print(json.dumps(rep, indent=2))
        return
    if rep["accuracy"]:
        stdout.print(accuracy_table(rep["accuracy"]).rich())
        stdout.print(cross_table(rep["cross"], [r["model"] for r in rep["accuracy"]]).rich())
    stdout.print(summary_table(rep["summary"], str(run_dir)).rich())
    stdout.print(f"report: {rep['report']}")
