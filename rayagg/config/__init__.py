"""The run configuration: one YAML file, validated before anything starts.

``sections.py`` holds the flat sections, ``tree.py`` the tree's shape, ``run_config.py``
the whole file and how it is read, ``overrides.py`` the command line's ``--set KEY=VALUE``
settings; everything is importable from here.
"""
from rayagg.config.overrides import apply_overrides, parse_override
from rayagg.config.run_config import RunConfig, load_config, parse_config, parse_config_text
from rayagg.config.sections import (BALANCE_POLICIES, METHODS, AutoencoderConfig, BalanceConfig, DataConfig,
                                    EmulationConfig, MethodConfig, OutputConfig, RuntimeConfig,
                                    SupervisionConfig, TrainingConfig, absolute_path)
from rayagg.config.tree import (BUILTIN_MODELS, Churn, Elastic, Resources, ScheduleStep, Tier, TreeConfig,
                                check_model_name, resolve_factory)

__all__ = ["BALANCE_POLICIES", "BUILTIN_MODELS", "METHODS", "MethodConfig", "AutoencoderConfig", "BalanceConfig", "Churn", "DataConfig",
           "Elastic", "EmulationConfig", "OutputConfig", "Resources", "RunConfig", "RuntimeConfig",
           "ScheduleStep", "SupervisionConfig", "Tier", "TrainingConfig", "TreeConfig", "absolute_path",
           "apply_overrides", "check_model_name", "load_config", "parse_config", "parse_config_text",
           "parse_override", "resolve_factory"]
