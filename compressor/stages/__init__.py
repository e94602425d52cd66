"""The stages (plus eval) as library functions; the CLI and the recipe runner call these."""

from compressor.stages.distill import distill
from compressor.stages.evaluate import evaluate
from compressor.stages.export import export
from compressor.stages.prune import prune
from compressor.stages.quantize import quantize
from compressor.stages.select import select
from compressor.stages.teach import teach

__all__ = ["teach", "select", "distill", "prune", "quantize", "export", "evaluate"]
