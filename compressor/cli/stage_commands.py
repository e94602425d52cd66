"""The stage commands: each is its stage config's options, the stage function and a summary."""

from __future__ import annotations

from compressor import stages
from compressor.cli.commands import stage_command, stdout
from compressor.config import (DistillConfig, EvalConfig, ExportConfig, PruneConfig, QuantizeConfig, SelectConfig,
                               TeachConfig)


def _select_layers(metrics: dict) -> None:
    for name, v in metrics["layers"].items():
        stdout.print(f"  {name}: kept {v['kept']} of {v['channels']} channels")


teach = stage_command(TeachConfig, stages.teach, "teach -> {out}")
select = stage_command(SelectConfig, stages.select, "select -> {out}", after=_select_layers)
distill = stage_command(DistillConfig, stages.distill, "distill -> {out}")
prune = stage_command(PruneConfig, stages.prune, "prune -> {out}")
quantize = stage_command(QuantizeConfig, stages.quantize, "quantize -> {out}")
export = stage_command(ExportConfig, stages.export, "export -> {out}")
evaluate = stage_command(EvalConfig, stages.evaluate, "eval {target}")
