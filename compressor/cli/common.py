"""Glue for the thin commands: runtime settings, error handling and the closing summary."""

from __future__ import annotations

import functools
import inspect
import json
import sys
from dataclasses import dataclass

import torch
import typer
from rich.console import Console
from rich.table import Table

from compressor import CompressorError
from compressor.cli import options as opt
from compressor.console import set_quiet
from compressor.stages.common import DataOptions
from compressor.training import TrainConfig

stdout = Console(highlight=False)
if not stdout.is_terminal:  # logs and CI: wide enough for the summary tables
    stdout = Console(highlight=False, width=140)


def _apply_runtime(quiet: bool, workers: int | None) -> None:
    set_quiet(quiet)
    if workers is not None:
        if workers < 1:
            raise CompressorError(f"--workers must be at least 1, got {workers}")
        torch.set_num_threads(workers)


def fail(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


# Option groups shared by the commands: (parameter name, annotated type, default).
GROUPS = {
    "data": [("data_root", opt.DataRootOpt, None), ("image_size", opt.ImageSizeOpt, None),
             ("download", opt.DownloadOpt, False), ("train_size", opt.TrainSizeOpt, None)],
    "train": [("lr", opt.LrOpt, 0.05), ("batch_size", opt.BatchOpt, 128), ("optimizer", opt.OptimOpt, opt.Optim("sgd")),
              ("weight_decay", opt.WeightDecayOpt, 5e-4), ("resume", opt.ResumeOpt, False)],
    "runtime": [("seed", opt.SeedOpt, 0), ("device", opt.DeviceOpt, opt.Device("auto")), ("workers", opt.WorkersOpt, None),
                ("json_", opt.JsonOpt, False), ("quiet", opt.QuietOpt, False)],
}


@dataclass
class Shared:
    """The shared options a command was called with, grouped as the library wants them."""

    values: dict

    def __getattr__(self, name):
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def device_name(self) -> str:
        return getattr(self.values.get("device", "auto"), "value", self.values.get("device", "auto"))

    def data(self, name: str) -> DataOptions:
        v = self.values
        return DataOptions(name=name, root=v.get("data_root"), image_size=v.get("image_size"),
                           download=v.get("download", False), train_size=v.get("train_size"))

    def train(self, epochs: int) -> TrainConfig:
        v = self.values
        return TrainConfig(epochs=epochs, lr=v["lr"], batch_size=v["batch_size"],
                           optimizer=getattr(v["optimizer"], "value", v["optimizer"]),
                           weight_decay=v["weight_decay"], seed=v.get("seed", 0))


def command(*groups: str, **defaults):
    """Give a command the shared option groups ('data', 'train', 'runtime') as one `shared` argument.

    Also turns user errors into one line on stderr with a non-zero exit, and Ctrl-C into exit 130.
    """

    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "shared"]
        names = [n for g in groups for n, _, _ in GROUPS[g]]
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(n, d), annotation=a)
                 for g in groups for n, a, d in GROUPS[g]]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            shared = Shared({n: kwargs.pop(n) for n in names if n in kwargs})
            try:
                if "runtime" in groups:
                    _apply_runtime(shared.quiet, shared.workers)
                return fn(*args, shared=shared, **kwargs) if "shared" in sig.parameters else fn(*args, **kwargs)
            except CompressorError as e:
                fail(str(e), getattr(e, "exit_code", 1))
            except KeyboardInterrupt:
                fail("interrupted", 130)

        wrapper.__signature__ = sig.replace(parameters=own + extra)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
        del wrapper.__wrapped__
        return wrapper

    return decorate


SUMMARY_KEYS = [("accuracy", "accuracy", "{:.4f}"), ("teacher_accuracy", "teacher acc", "{:.4f}"),
                ("agreement", "agreement", "{:.4f}"), ("control_accuracy", "student alone", "{:.4f}"),
                ("sparsity", "sparsity", "{:.3f}"), ("params", "params", "{:,}"),
                ("accuracy_int8", "int8 acc", "{:.4f}"), ("zipped_bytes_fp32", "zipped fp32", "{:,}"),
                ("zipped_bytes_int8", "zipped int8", "{:,}"), ("latency_ms_fp32", "fp32 ms", "{:.2f}"),
                ("latency_ms_int8", "int8 ms", "{:.2f}"), ("wall_time_s", "wall s", "{:.1f}")]


def show(metrics: dict, as_json: bool, title: str) -> None:
    """Print a stage's result: a small table, or JSON with --json."""
    if as_json:
        print(json.dumps(metrics, indent=2, default=str))
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label, fmt in SUMMARY_KEYS:
        if metrics.get(key) is not None:
            table.add_row(label, fmt.format(metrics[key]))
    stdout.print(table)
