"""One typed config per stage: the single home of every option's name, type, default, bounds and help.

The CLI (`compressor.cli`), the recipe schema (`compressor.recipe`), the stage functions
(`compressor.stages`) and the settings recorded in model.json and in checkpoints all derive from
these classes. Adding an option to a stage touches one class (plus its use): `base` has the
machinery, `groups` the option groups the stages share, `stages` each stage's config.
"""

from compressor.config.base import Config, field_extra, option
from compressor.config.groups import Augmentation, DataFields, DistillOptions, Output, Runtime, TrainConfig
from compressor.config.stages import (LINEAGE_SETTINGS, POST_TRAINING_INT8, STAGE_CONFIGS, DistillConfig, EvalConfig,
                                      ExportConfig, PruneConfig, QuantizeConfig, SelectConfig, TeachConfig, input_dirs,
                                      input_fields)

__all__ = ["LINEAGE_SETTINGS", "POST_TRAINING_INT8", "STAGE_CONFIGS", "Augmentation", "Config", "DataFields",
           "DistillConfig", "DistillOptions", "EvalConfig", "ExportConfig", "Output", "PruneConfig", "QuantizeConfig", "Runtime",
           "SelectConfig", "TeachConfig", "TrainConfig", "field_extra", "input_dirs", "input_fields", "option"]
