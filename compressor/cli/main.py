"""The `compress` entry point: registers one command per module."""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.2x vendors its own click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException

from compressor.cli.commands import paragraphs
from compressor.cli.pipeline_commands import report, run, sweep
from compressor.cli.stage_commands import distill, evaluate, export, prune, quantize, select, teach

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
EXAMPLES = {
    "teach": ["compress teach --data fashion-mnist --model resnet18 --epochs 5 --out runs/demo/teach",
              "compress teach --data imagefolder --data-root /data/dogs --model efficientnet_b0 --pretrained "
              "--trainable 'blocks.6|conv_head' --out runs/dogs/teach"],
    "select": ["compress select runs/demo/teach --data fashion-mnist --top-k 64 --out runs/demo/select"],
    "distill": ["compress distill --teacher runs/demo/teach --student convtiny --data fashion-mnist --control "
                "--out runs/demo/distill",
                "compress distill --teacher runs/demo/teach --student convtiny --data fashion-mnist --omit-classes 3 "
                "--bias-shift --control --out runs/demo/no-dresses",
                "compress distill --teacher runs/demo/teach --student convverytiny --data fashion-mnist --scheme assistant "
                "--assistant convtiny --out runs/demo/via-assistant",
                "compress distill --teacher runs/demo/teach --student convtiny --data fashion-mnist --method vid "
                "--pairs all --out runs/demo/vid"],
    "prune": ["compress prune runs/demo/distill --data fashion-mnist --sparsity 0.6 --finetune-epochs 2 "
              "--teacher runs/demo/teach --out runs/demo/prune",
              "compress prune runs/demo/distill --data fashion-mnist --structured --sparsity 0.5 --out runs/demo/slim",
              "compress prune runs/demo/distill --data fashion-mnist --structured --target-latency 1.5 --runtime openvino "
              "--finetune-epochs 3 --teacher runs/demo/teach --out runs/demo/fast"],
    "quantize": ["compress quantize runs/demo/prune --data fashion-mnist --out runs/demo/quantize"],
    "export": ["compress export runs/demo/prune --data fashion-mnist --int8 --out runs/demo/export",
               "compress export runs/demo/quantize --data fashion-mnist --runtime all --out runs/demo/export-qat"],
    "eval": ["compress eval runs/demo/export/model.int8.onnx --data fashion-mnist --teacher runs/demo/teach"],
    "run": ["compress run recipes/quickstart.yaml", "compress run recipes/quickstart.yaml --resume"],
    "report": ["compress report runs/fashion-mnist-quickstart"],
    "sweep": ["compress sweep recipes/quickstart.yaml --grid distill.temperature=1,3,8 --grid distill.alpha=0,0.5,1",
              "compress sweep recipes/quickstart.yaml --random 8 --seed 3 --grid distill.beta=0.1:0.9"],
}


def epilog(examples: list[str]) -> str:
    """A command's "Examples" block: one command per paragraph (typer joins the lines of one)."""
    return "\n\n".join(["Examples:", *(f"  $ {e}" for e in examples)])


for _name, _fn in COMMANDS.items():
    app.command(_name, help=paragraphs(_fn.__doc__), epilog=epilog(EXAMPLES[_name]))(_fn)


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
