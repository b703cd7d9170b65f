"""Recipes: the schema, reading YAML with lines, overrides, one-line errors and cross-checks.

- ``schema`` / ``evaluation``: the pydantic models of a recipe;
- ``yaml_lines``: safe YAML reading that records each key's line;
- ``overrides``: ``key.path=value`` from the command line;
- ``messages``: validation errors as one line naming file, line and field;
- ``checks``: what a schema cannot say (references, each entry's support, distribution, precision);
- ``stages``: what a stage means beyond its fields (formats, objective, rewritten datasets);
- ``loading``: file or dict + overrides -> a checked :class:`Recipe`.
"""

from .evaluation import CurveSteps, EvalTaskConfig, EvaluationConfig, GuardConfig, StageEval
from .loading import config_hash, load_recipe, load_suite, recipe_from_dict, recipe_to_dict
from .messages import raise_validation_error
from .schema import (
    PLUGIN_FIELDS,
    DatasetConfig,
    DistributedConfig,
    ModelConfig,
    PerformanceConfig,
    QuantizationConfig,
    Recipe,
    StageConfig,
)
from .stages import (
    builds_model,
    earlier_data,
    measures_kl,
    plugin_configs,
    stage_formats,
    stage_objective,
    transform_targets,
)
from .yaml_lines import line_for, read_text_file, read_yaml, read_yaml_file

__all__ = [
    "PLUGIN_FIELDS",
    "CurveSteps",
    "DatasetConfig",
    "DistributedConfig",
    "EvalTaskConfig",
    "EvaluationConfig",
    "GuardConfig",
    "ModelConfig",
    "PerformanceConfig",
    "QuantizationConfig",
    "Recipe",
    "StageConfig",
    "StageEval",
    "builds_model",
    "measures_kl",
    "config_hash",
    "earlier_data",
    "line_for",
    "load_recipe",
    "load_suite",
    "plugin_configs",
    "raise_validation_error",
    "read_text_file",
    "read_yaml",
    "read_yaml_file",
    "recipe_from_dict",
    "recipe_to_dict",
    "stage_formats",
    "stage_objective",
    "transform_targets",
]
