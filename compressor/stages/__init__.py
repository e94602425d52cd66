"""The stages (plus eval) as library functions; the CLI and the recipe runner call these."""

from compressor.stages.distill_stage import distill
from compressor.stages.evaluate_stage import evaluate
from compressor.stages.export_stage import export
from compressor.stages.prune_stage import prune
from compressor.stages.quantize_stage import quantize
from compressor.stages.select_stage import select
from compressor.stages.teach_stage import teach

__all__ = ["teach", "select", "distill", "prune", "quantize", "export", "evaluate"]
