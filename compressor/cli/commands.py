"""Glue for the thin commands: options derived from the stage configs, runtime settings, error
handling and the closing summary."""

from __future__ import annotations

import functools
import inspect
import json
import sys
import typing
from enum import Enum
from typing import Annotated, Any, Literal, Optional

import torch
import typer
from rich.console import Console

from compressor import CompressorError, distributed
from compressor.cli import options as opt
from compressor.config import (Augmentation, Config, DataFields, DistillOptions, Output, Runtime, TrainConfig,
                               field_extra)
from compressor.console import set_quiet
from compressor.deploy.int8 import Int8Form
from compressor.deploy.phones import delegated_share
from compressor.tables import Table, fmt

stdout = Console(highlight=False)
if not stdout.is_terminal:  # logs and CI: wide enough for the summary tables
    stdout = Console(highlight=False, width=140)


def apply_runtime(quiet: bool, threads: int | None, device: str = "auto") -> None:
    """Join torchrun's process group when launched by it (only rank 0 prints); set CPU threads."""
    distributed.init(device)
    set_quiet(quiet or not distributed.is_main())
    if threads is not None:
        if threads < 1:
            raise CompressorError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def paragraphs(doc: str | None) -> str:
    """A docstring as `--help` text: each paragraph one line, which the terminal wraps at its width
    (typer keeps a docstring's line breaks, and rich then wraps each line on its own: ragged text)."""
    blocks = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in b.splitlines()) for b in blocks)


def fail(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def guarded(fn):
    """User errors become one line on stderr with a non-zero exit; Ctrl-C becomes exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CompressorError as e:
            fail(str(e), getattr(e, "exit_code", 1))
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


def choices(name: str, values) -> type[Enum]:
    """A str Enum of the given values: typer shows them in --help and rejects anything else."""
    return Enum(name, {v: v for v in values}, type=str)


def _cli_type(annotation) -> Any:
    """The type typer is given for a config field: Literal choices become a str Enum."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return choices("Choice", typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return str  # a list-valued setting is one string on the command line, parsed by its validator
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return Optional[_cli_type(args[0])]
    return annotation


def _flag(info, public: str) -> str:
    return field_extra(info).get("flag") or "--" + public.replace("_", "-")


def cli_doc(config: type[Config], doc: str | None) -> str:
    """A stage's docstring for its command's --help: each `setting` it names becomes its `--flag`
    (an argument: its NAME)."""
    doc = inspect.cleandoc(doc or "")
    for name, info in config.model_fields.items():
        public = info.alias or name
        said = public.upper() if field_extra(info).get("argument") else _flag(info, public).split("/")[0]
        doc = doc.replace(f"`{name}`", f"`{said}`")
    return doc


def config_parameters(config: type[Config]) -> list[inspect.Parameter]:
    """One CLI parameter per config field: its flag, type, default, help and --help panel come from
    the field and the option group that declares it."""
    params = []
    for name, info in config.model_fields.items():
        extra, public = field_extra(info), info.alias or name
        typ = _cli_type(info.annotation)
        default = inspect.Parameter.empty if info.is_required() else info.default
        rank, panel = _group(config, name)
        panel = MAIN_PANEL if extra.get("main") else panel
        if extra.get("argument"):
            decl = typer.Argument(help=_plain(info.description))
        else:
            flag = _flag(info, public)
            if typ is bool and default is True and "/" not in flag:
                flag = f"{flag}/--no-{flag[2:]}"
            decl = typer.Option(flag, *([extra["short"]] if extra.get("short") else []),
                                help=_plain(info.description), rich_help_panel=panel)
        if isinstance(default, str) and isinstance(typ, type) and issubclass(typ, Enum):
            default = typ(default)
        key = (not extra.get("argument", False), not extra.get("main"), rank, not info.is_required())
        params.append((key, inspect.Parameter(public, inspect.Parameter.KEYWORD_ONLY, default=default,
                                              annotation=Annotated[typ, decl])))
    return [p for _, p in sorted(params, key=lambda t: t[0])]


def _plain(text: str | None) -> str | None:
    """Help text shown as written: rich would read `[mlflow]` in `pip install 'compressor[mlflow]'` as markup."""
    return text.replace("[", "\\[") if text else text


MAIN_PANEL = None  # typer's first panel, "Options" (with --help): the options a user gives first (option(main=True))
STAGE_PANEL = "Stage options"
GROUP_PANELS = ((DistillOptions, "Method"), (DataFields, "Data"), (TrainConfig, "Training"),
                (Augmentation, "Photographs' augmentation (imagefolder)"), (Runtime, opt.RUNTIME_PANEL),
                (Output, opt.RUNTIME_PANEL))  # in --help order, after the stage's own options


def _group(config: type[Config], name: str) -> tuple[int, str]:
    """--help order and panel: the stage's own options, then the shared groups (the method, what to
    read, how to train, how photographs are augmented, where to run and write)."""
    for rank, (cls, panel) in enumerate(((config, STAGE_PANEL), *GROUP_PANELS)):
        if name in cls.__dict__.get("__annotations__", {}):
            return rank, panel
    return 0, STAGE_PANEL


PRESENTATION = [inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=opt.ThreadsOpt),
                inspect.Parameter("json_", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=opt.JsonOpt),
                inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=opt.QuietOpt)]


def _value(v):
    """An option's value as the config takes it (typer gives a choice as an Enum member)."""
    return v.value if isinstance(v, Enum) else v


def config_from_options(config: type[Config], options: dict) -> Config:
    """The stage config a command's parsed options give (the presentation options left out). Only the
    options that differ from their default count as given (a required one always does), so a method
    can tell an explicit --beta from its own default."""
    defaults = {info.alias or name: info.default for name, info in config.model_fields.items()}
    return config.make(**{k: _value(v) for k, v in options.items() if k in defaults and _value(v) != defaults[k]})


def stage_command(config: type[Config], run, title: str, after=None):
    """A CLI command for a stage: its options come from `config`; it validates them, runs the stage
    and prints the summary."""
    params = config_parameters(config)

    @guarded
    def command(**kw):
        json_, quiet, threads = kw.pop("json_"), kw.pop("quiet"), kw.pop("threads")
        apply_runtime(quiet, threads, kw.get("device") or "auto")
        metrics = run(config_from_options(config, kw))
        show(metrics, json_, title.format(**{k: _value(v) for k, v in kw.items()}))
        if after is not None and not json_:
            after(metrics)

    command.__signature__ = inspect.Signature(params + PRESENTATION)
    command.__doc__ = cli_doc(config, inspect.getdoc(run))
    return command


SUMMARY_KEYS = [("accuracy", "accuracy", "{:.4f}"), ("accuracy_float", "float model acc", "{:.4f}"),
                ("accuracy_calibrated", "int8 acc before fine-tuning", "{:.4f}"),
                ("teacher_accuracy", "teacher acc", "{:.4f}"),
                ("agreement", "agreement", "{:.4f}"), ("control_accuracy", "student alone", "{:.4f}"),
                ("ensemble_accuracy", "ensemble acc", "{:.4f}"),
                ("sparsity", "sparsity", "{:.3f}"), ("params", "params", "{:,}"),
                ("accuracy_fp32", "fp32 acc", "{:.4f}"), ("accuracy_bf16", "bf16 acc", "{:.4f}"),
                ("accuracy_fp16", "fp16 acc", "{:.4f}"),
                ("accuracy_int8", "int8 acc", "{:.4f}"), ("zipped_bytes_fp32", "zipped fp32", "{:,}"),
                ("zipped_bytes_int8", "zipped int8", "{:,}"), ("latency_ms_fp32", "fp32 ms", "{:.2f}"),
                ("latency_ms_bf16", "bf16 ms", "{:.2f}"), ("latency_ms_fp16", "fp16 ms", "{:.2f}"),
                ("latency_ms_int8", "int8 ms", "{:.2f}"), ("wall_time_s", "wall s", "{:.1f}")]


RUNTIME_KEYS = tuple(f"{k}_{form}" for k in ("accuracy", "latency_ms")
                     for form in ("fp32", "bf16", "fp16", "int8"))  # export: one figure per runtime


def show(metrics: dict, as_json: bool, title: str) -> None:
    """Print a stage's result: a small table, or JSON with --json (under torchrun, rank 0 only)."""
    if not distributed.is_main():
        return
    if as_json:
        print(json.dumps(metrics, indent=2, default=str))
        return
    table = Table(["metric", "value"], title=title)
    runtimes = metrics.get("runtimes") or {}
    for key, label, spec in SUMMARY_KEYS:
        if runtimes and key in RUNTIME_KEYS:
            for rt, values in runtimes.items():  # each runtime's figures, named
                if values.get(key) is not None:
                    table.add(f"{label} ({rt})", fmt(values[key], spec))
        elif metrics.get(key) is not None:
            table.add(label, fmt(metrics[key], spec))

    for rt, values in (runtimes or {"": metrics}).items():  # each runtime's int8 file has its own form
        if values.get("int8_form"):
            table.add(f"int8 form ({rt})" if rt else "int8 form", Int8Form(**values["int8_form"]).label())
    for rt, values in runtimes.items():  # the file to ship on each runtime
        if values.get("deploy_form"):
            form = values["deploy_form"]
            table.add(f"deploy ({rt})", f"{form}: {values['deploy_file']}, {values[f'latency_ms_{form}']:.2f} ms, "
                                        f"{values['deploy_speedup']:.2f}x fp32")
    for target, values in (metrics.get("targets") or {}).items():  # phone targets: their own runtime, batch 1
        for form in values["forms"]:
            d = values[f"delegation_{form}"]
            table.add(f"{form} acc ({target})", fmt(values[f"accuracy_{form}"], "{:.4f}"))
            table.add(f"{form} ms at batch 1 ({target})", fmt(values[f"latency_ms_{form}_batch1"], "{:.3f}"))
            table.add(f"{form} delegated ({target})", f"{delegated_share(d)} operators")
        if values.get("int8_form") and len(values.get("int8_candidates") or []) > 1:
            table.add(f"int8 form ({target})", values["int8_form"])
        for form in ("fp32", "int8"):
            if values.get(f"error_{form}"):
                table.add(f"{form} ({target})", f"not written: {values[f'error_{form}']}")
        if not values.get("deploy_form"):
            continue
        form = values["deploy_form"]
        table.add(f"deploy ({target})", f"{form}: {values['deploy_file']}, {values[f'latency_ms_{form}_batch1']:.3f} ms "
                                        f"at batch 1, {values['deploy_speedup']:.2f}x fp32")
    if metrics.get("cpu_flags") is not None:
        table.add("CPU flags", " ".join(metrics["cpu_flags"]) or "-")
    stdout.print(table.rich())
