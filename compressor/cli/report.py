import json
from typing import Annotated

import typer
from rich.table import Table

from compressor.cli.common import command, stdout
from compressor.cli.options import JsonOpt
from compressor.report import summary_table, write_report


@command()
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
        t = Table(title="accuracy on the test split")
        for col in ("model", "hard labels", "teacher's labels"):
            t.add_column(col, justify="left" if col == "model" else "right")
        for r in rep["accuracy"]:
            t.add_row(r["model"], f"{r['hard']:.4f}", f"{r['soft']:.4f}")
        stdout.print(t)
        names = [r["model"] for r in rep["accuracy"]]
        t = Table(title="right/wrong cross table (count; mean probability of the predicted class)")
        for n in names:
            t.add_column(n)
        t.add_column("count", justify="right")
        for n in names:
            t.add_column(f"p({n})", justify="right")
        for r in rep["cross"]:
            t.add_row(*(r["cell"][n] for n in names), f"{r['count']:,}",
                      *("" if r["mean_confidence"][n] is None else f"{r['mean_confidence'][n]:.3f}" for n in names))
        stdout.print(t)
    stdout.print(summary_table(rep["summary"], str(run_dir)))
    stdout.print(f"report: {rep['report']}")
