"""The options that are not a stage's settings (how to print, how many threads), in one place.

Every stage option is declared once, in its stage's config (`compressor.config`); the commands'
options are derived from those classes (`compressor.cli.commands.config_parameters`).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

RUNTIME_PANEL = "Output and runtime"  # the --help panel of where to run, write and print

ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads for PyTorch's operations (default: all cores; under torchrun, its "
                      "OMP_NUM_THREADS, 1 unless set).", rich_help_panel=RUNTIME_PANEL)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout (progress stays on stderr).",
                                                   rich_help_panel=RUNTIME_PANEL)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", rich_help_panel=RUNTIME_PANEL)]
RecipeDeviceOpt = Annotated[Optional[str], typer.Option("--device", help="Override the recipe's device: auto, cpu or cuda.")]
RecipeArg = Annotated[str, typer.Argument(help="Recipe YAML: name, seed, data and the stages to run.")]
RunOutOpt = Annotated[Optional[str], typer.Option("--out", help="Run directory (default: runs/<recipe name>); one subdirectory per stage.")]
