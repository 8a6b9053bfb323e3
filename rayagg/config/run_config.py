"""The whole run configuration (one YAML file) and how it is read.

Nothing below the CLI sees click objects; everything below this module sees a
:class:`RunConfig`, validated before anything starts.
"""
from __future__ import annotations

import pathlib
from typing import Annotated, Any, Sequence

import pydantic
import yaml
from pydantic import BeforeValidator, Field, field_validator, model_validator

from rayagg.config.overrides import apply_overrides
from rayagg.config.sections import (AutoencoderConfig, BalanceConfig, DataConfig, EmulationConfig, MethodConfig,
                                    OutputConfig, RuntimeConfig, SupervisionConfig, TrainingConfig, _name_alone,
                                    _Section)
from rayagg.config.tracking import TrackingConfig
from rayagg.config.tree import TreeConfig
from rayagg.errors import ConfigError
from rayagg.nodes import index_of, is_node_of
from rayagg.storage import as_path


class RunConfig(_Section):
    """A whole run: the root of the YAML file."""

    name: str = "run"
    method: Annotated[MethodConfig, BeforeValidator(_name_alone)] = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tree: TreeConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    supervision: SupervisionConfig = Field(default_factory=SupervisionConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    emulation: EmulationConfig = Field(default_factory=EmulationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, value: str) -> str:
        # The name ends a path (<base_dir>/<name>-<timestamp>): `../../x` would put the run
        # outside base_dir.
        if value in ("", ".", "..") or any(char in value for char in "/\\\0"):
            raise ValueError("a run name is a plain name: not empty, `.` or `..`, and without "
                             "`/`, `\\` or NUL")
        return value

    @model_validator(mode="after")
    def _slowdown_names_nodes_or_tiers(self) -> "RunConfig":
        capacity = dict(zip((tier.name for tier in self.tree.tiers), self.tree.capacities()))
        for key in self.emulation.slowdown:
            if key in capacity or any(is_node_of(key, tier) and index_of(key) < count
                                      for tier, count in capacity.items()):
                continue
            raise ValueError(f"emulation.slowdown: {key!r} is neither a tier ({', '.join(capacity)}) "
                             "nor a node of the tree")
        return self

    @model_validator(mode="after")
    def _averaged_tiers_share_a_model(self) -> "RunConfig":
        # Averaging weights needs one architecture everywhere (docs/methods.md).
        models = {tier.name: tier.model for tier in self.tree.tiers}
        if self.method.name == "hierfavg" and len(set(models.values())) > 1:
            listed = ", ".join(f"{tier} {model}" for tier, model in models.items())
            raise ValueError(f"method hierfavg averages weights across tiers, so every tier needs the same "
                             f"model; the tiers have {listed} (set one model for all, e.g. cnn)")
        return self

    @model_validator(mode="after")
    def _enough_samples_per_leaf(self) -> "RunConfig":
        leaves = self.tree.capacities()[-1]
        needed = leaves * self.data.min_samples_per_device
        if self.data.train_samples is not None and self.data.train_samples < needed:
            raise ValueError(
                f"data.train_samples {self.data.train_samples} is fewer than {leaves} leaves x "
                f"min_samples_per_device {self.data.min_samples_per_device} = {needed}")
        return self

    def with_changes(self, **sections: dict[str, Any]) -> "RunConfig":
        """Returns a validated copy with some keys of some sections changed, e.g.
        ``config.with_changes(supervision={"replace_dead": True})``."""
        raw = self.model_dump()
        for section, changes in sections.items():
            if section not in raw:
                raise ConfigError(f"config has no section {section!r}")
            raw[section] = {**raw[section], **changes}
        return parse_config(raw)

    def with_rounds(self, rounds: int) -> "RunConfig":
        """Returns a copy with another round count (validated)."""
        return self.with_changes(training={"rounds": rounds})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def parse_config(raw: Any, source: str = "config") -> RunConfig:
    """Validates a mapping; raises ConfigError naming every bad field and its value."""
    if raw is None:
        raise ConfigError(f"{source}: expected a mapping at the top level, got an empty document")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n{_describe(exc)}") from None


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Reads and validates a YAML config (a local file, or an object on a store: a run's
    config.yaml there), with the ``--set KEY=VALUE`` settings of ``overrides`` applied
    before validation (rayagg/config/overrides.py); raises ConfigError for a missing file,
    bad content or a setting that names no place in the file."""
    path = as_path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    return parse_config_text(_text_of(raw, path), source=str(path), overrides=overrides)


def _text_of(raw: bytes, path: pathlib.Path) -> str:
    """The file's text (UTF-8, a byte-order mark dropped); raises ConfigError for binary bytes."""
    if b"\0" in raw:
        raise ConfigError(f"{path}: not a text YAML file (byte {raw.index(0)} is NUL)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text YAML file (byte {exc.start} is not UTF-8)") from None


def parse_config_text(text: str, source: str = "config", overrides: Sequence[str] = ()) -> RunConfig:
    """Validates a YAML document (e.g. a config that travelled with a Ray job), with the
    ``--set KEY=VALUE`` settings of ``overrides`` applied first, later ones winning; raises
    ConfigError naming ``source`` (and the settings) for bad YAML or content."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if overrides:
        raw = apply_overrides(raw, overrides)
        source = f"{source} with {' '.join(f'--set {setting}' for setting in overrides)}"
    return parse_config(raw, source=source)


def _describe(exc: pydantic.ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "<root>"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        value = error.get("input")
        shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
        lines.append(f"  {field}: {message}{shown}")
    return "\n".join(lines)
