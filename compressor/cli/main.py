"""The `compress` entry point: registers one command per module."""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.2x vendors its own click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException

from compressor.cli.common import paragraphs
from compressor.cli.report import report
from compressor.cli.run import run
from compressor.cli.stages import distill, evaluate, export, prune, quantize, select, teach
from compressor.cli.sweep import sweep

app = typer.Typer(
    name="compress",
    help="Turn a big image classifier into a small, fast one: teach -> select -> distill -> prune -> quantize -> export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
COMMANDS = {"teach": teach, "select": select, "distill": distill, "prune": prune, "quantize": quantize,
            "export": export,
            "eval": evaluate, "run": run, "report": report, "sweep": sweep}
for _name, _fn in COMMANDS.items():
    app.command(_name, help=paragraphs(_fn.__doc__))(_fn)


def main() -> None:
    """Console script: usage errors become one line (`error: ...`) and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except ClickException as e:
        ctx = getattr(e, "ctx", None)
        hint = f" (see 'compress {ctx.info_name} --help')" if ctx is not None and ctx.parent else ""
        print(f"error: {e.format_message().replace('Value error, ', '')}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
