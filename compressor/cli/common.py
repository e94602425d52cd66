"""Glue for the thin commands: runtime settings, error handling and the closing summary."""

from __future__ import annotations

import functools
import json
import sys

import torch
import typer
from rich.console import Console
from rich.table import Table

from compressor import CompressorError
from compressor.console import set_quiet
from compressor.stages.common import DataOptions
from compressor.training import TrainConfig

stdout = Console(highlight=False)


def runtime(quiet: bool, workers: int | None) -> None:
    set_quiet(quiet)
    if workers is not None:
        if workers < 1:
            raise CompressorError(f"--workers must be at least 1, got {workers}")
        torch.set_num_threads(workers)


def data_options(data: str, data_root, image_size, download: bool, train_size) -> DataOptions:
    return DataOptions(name=data, root=data_root, image_size=image_size, download=download, train_size=train_size)


def train_config(epochs: int, lr: float, batch_size: int, optimizer, weight_decay: float, seed: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=getattr(optimizer, "value", optimizer),
                       weight_decay=weight_decay, seed=seed)


def fail(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def guarded(fn):
    """Turn user errors into one line on stderr and a non-zero exit; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CompressorError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


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
