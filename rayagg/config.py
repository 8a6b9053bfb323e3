"""The run configuration: one YAML file, validated before anything starts.

Every section is a frozen pydantic model that forbids unknown keys, so a typo is an
error naming the key rather than a silently ignored setting. Pydantic earns its place
here: it reports every bad field with its dotted path and value in one pass, which a
hand-written validator would have to re-implement. Nothing below the CLI sees click
objects; everything below this module sees a :class:`RunConfig`.
"""
from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Literal, Optional

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rayagg.errors import ConfigError
from rayagg.models import check_model_name

_TIER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class _Section(BaseModel):
    # allow_inf_nan=False: YAML reads `.inf` and `.nan` as floats, and no knob here has a
    # meaning for them (an lr of nan would only show up rounds later as a nan loss).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Which data set, how much of it, and how it is split over the leaves."""

    dataset: Literal["fashion-mnist", "cifar10", "cifar100"] = "fashion-mnist"
    root: Optional[str] = None
    download: bool = False
    coarse_labels: bool = False
    partition: Literal["dirichlet", "iid"] = "dirichlet"
    alpha: float = Field(1.0, gt=0)
    min_samples_per_device: int = Field(10, ge=1)
    train_samples: Optional[int] = Field(None, ge=1)
    test_samples: Optional[int] = Field(None, ge=1)
    public_samples: int = Field(5000, ge=1)

    @model_validator(mode="after")
    def _coarse_only_for_cifar100(self) -> "DataConfig":
        if self.coarse_labels and self.dataset != "cifar100":
            raise ValueError(f"coarse_labels applies to cifar100 only (dataset is {self.dataset!r})")
        return self


class Resources(_Section):
    """What one node of a tier asks Ray for; a host actor carrying several nodes asks
    for the sum of its nodes' requests (see ``Tier.nodes_per_actor``)."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory_mb: Optional[int] = Field(None, ge=1)
    custom: dict[str, float] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("custom")
    @classmethod
    def _custom_non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for key, amount in value.items():
            if amount < 0:
                raise ValueError(f"custom resource {key!r} must be >= 0 (got {amount})")
        return value


class ScheduleStep(_Section):
    """From round ``round`` on, the elastic tier aims for ``devices`` active devices."""

    round: int = Field(ge=1)
    devices: int = Field(ge=1)


class Churn(_Section):
    """Random churn: before each round every active device leaves with probability
    ``leave`` and every device of the range that is away (left, failed or never joined)
    joins with probability ``join``. Drawn from ``seed`` and the round number alone, so a
    seed gives the same membership every time; the count stays within the range."""

    leave: float = Field(ge=0, le=1)
    join: float = Field(ge=0, le=1)
    seed: int = 0


class Elastic(_Section):
    """The leaf tier's membership changes between rounds (rayagg/membership.py).

    The data set is partitioned once into ``max_devices`` shards, one per possible device
    (``device-0`` .. ``device-<max-1>``); the tier's ``count`` devices are active at
    start. Joins and leaves happen at round boundaries, from ``rayagg scale`` requests,
    the ``schedule`` or the ``churn`` model (one of the two at most).
    """

    min_devices: int = Field(ge=1)
    max_devices: int = Field(ge=1)
    schedule: list[ScheduleStep] = Field(default_factory=list)
    churn: Optional[Churn] = None

    @model_validator(mode="after")
    def _consistent(self) -> "Elastic":
        if self.min_devices > self.max_devices:
            raise ValueError(f"min_devices {self.min_devices} > max_devices {self.max_devices}")
        if self.schedule and self.churn is not None:
            raise ValueError("give a schedule or a churn model, not both")
        rounds = [step.round for step in self.schedule]
        if rounds != sorted(set(rounds)):
            raise ValueError(f"schedule rounds must increase strictly (got {rounds})")
        for step in self.schedule:
            self.check_count(step.devices, f"schedule at round {step.round}")
        return self

    def check_count(self, devices: int, what: str) -> None:
        """Raises ValueError unless ``devices`` lies within the range."""
        if not self.min_devices <= devices <= self.max_devices:
            raise ValueError(f"{what}: {devices} devices is outside the range "
                             f"[{self.min_devices}, {self.max_devices}]")


class Tier(_Section):
    """One level of the tree. ``count`` is the tier's total, ``fanout`` its children per parent.

    ``nodes_per_actor`` packs the tier's nodes onto host actors (rayagg/runtime/hosts.py):
    1, the default, gives every node a process of its own; 32 puts up to 32 nodes in one
    process, which shares one torch, one frozen autoencoder and one test split between
    them. Each node keeps its own model, optimizer, seed, data and checkpoint either way.
    """

    name: str
    model: str
    count: Optional[int] = Field(None, ge=1)
    fanout: Optional[int] = Field(None, ge=1)
    nodes_per_actor: int = Field(1, ge=1)
    resources: Resources = Field(default_factory=Resources)
    elastic: Optional[Elastic] = None  # the leaf tier only: devices join and leave

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        if not _TIER_NAME.match(value):
            raise ValueError(f"tier name must match {_TIER_NAME.pattern} (got {value!r})")
        return value

    @model_validator(mode="after")
    def _packed_gpus_are_whole(self) -> "Tier":
        # Ray accepts fractions of one GPU per actor, but only whole GPUs above one.
        gpus = self.resources.num_gpus * self.nodes_per_actor
        if gpus > 1 and abs(gpus - round(gpus)) > 1e-9:
            raise ValueError(f"tier {self.name!r}: {self.nodes_per_actor} nodes per actor x num_gpus "
                             f"{self.resources.num_gpus} = {gpus:g} GPUs per actor; Ray needs a whole "
                             "number above 1 (or a fraction of one)")
        return self

    @field_validator("model")
    @classmethod
    def _model_exists(cls, value: str) -> str:
        try:
            check_model_name(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value


class TreeConfig(_Section):
    """The tiers from the root (first) to the leaves (last)."""

    tiers: list[Tier] = Field(min_length=2)

    @model_validator(mode="after")
    def _shape_is_consistent(self) -> "TreeConfig":
        names = [tier.name for tier in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique (got {names})")
        root = self.tiers[0]
        if root.fanout is not None or root.count not in (None, 1):
            raise ValueError(f"the root tier {root.name!r} must have count 1 and no fanout")
        for tier in self.tiers[1:]:
            if (tier.count is None) == (tier.fanout is None):
                raise ValueError(f"tier {tier.name!r} needs exactly one of count or fanout")
        self.counts()  # raises on counts that do not divide
        for tier in self.tiers[:-1]:
            if tier.elastic is not None:
                raise ValueError(f"tier {tier.name!r}: only the leaf tier may be elastic")
        if self.elastic is not None:
            self.elastic.check_count(self.counts()[-1], f"tier {self.tiers[-1].name!r} count")
        return self

    @property
    def elastic(self) -> Optional[Elastic]:
        """The leaf tier's elastic range, or None for a fixed tree."""
        return self.tiers[-1].elastic

    def capacities(self) -> list[int]:
        """Nodes per tier that may ever exist: ``counts()``, but ``max_devices`` for an
        elastic leaf tier (every possible device has a name, a shard and a host slot)."""
        counts = self.counts()
        if self.elastic is not None:
            counts[-1] = self.elastic.max_devices
        return counts

    def counts(self) -> list[int]:
        """Returns the number of nodes per tier at start; raises ValueError if a count does not
        divide by the tier above (an elastic leaf tier's may: it is spread as evenly as it goes)."""
        counts = [1]
        for tier in self.tiers[1:]:
            if tier.fanout is not None:
                counts.append(counts[-1] * tier.fanout)
                continue
            # An elastic tier's devices come and go anyway: its start need not be even.
            if tier.count % counts[-1] and tier.elastic is None:
                raise ValueError(
                    f"tier {tier.name!r}: count {tier.count} is not divisible by the "
                    f"{counts[-1]} nodes of the tier above")
            counts.append(tier.count)
        return counts


class TrainingConfig(_Section):
    """Rounds, optimizer and the BSBODP loss settings (T, beta, gamma)."""

    rounds: int = Field(5, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(16, ge=2)
    temperature: float = Field(3.0, gt=0)
    beta: float = Field(10.0, ge=0)
    gamma: float = Field(1.0, ge=0)
    teacher_mode: Literal["train", "eval"] = "train"
    seed: int = 0


class AutoencoderConfig(_Section):
    """The frozen bridge autoencoder, pretrained once on the public slice and cached."""

    epochs: int = Field(5, ge=1)
    cache_dir: str = "~/.cache/rayagg"

    def cache_path(self) -> pathlib.Path:
        return pathlib.Path(self.cache_dir).expanduser()


class RuntimeConfig(_Section):
    """How the Ray runtime waits on its nodes.

    ``round_timeout_s`` bounds one round (and each other batch of calls) end to end;
    ``startup_timeout_s`` bounds actor creation and data loading. ``autoscaling`` says an
    autoscaler may add nodes, so a tree larger than the cluster's current totals is not
    an error (a request no node type can satisfy still is).

    ``rounds_in_flight`` is how many rounds may be submitted before the oldest is
    collected: with 2 (the default) an edge starts its next round with its devices while
    the cloud still works with other edges, and every node still does the in-process
    driver's work in the same order, so results are the same. 1 puts a barrier after
    every round. A tree that may change at a round boundary (elastic devices,
    rebalancing, a pending repair) is drained first, whatever the setting.
    """

    round_timeout_s: float = Field(1800.0, gt=0)
    startup_timeout_s: float = Field(300.0, gt=0)
    autoscaling: bool = False
    rounds_in_flight: int = Field(2, ge=1)


class SupervisionConfig(_Section):
    """Heartbeats, failure detection and recovery (see rayagg/supervision.py).

    A node is dead after ``heartbeat_interval_s * max_missed`` seconds of silence, or at
    once when a call to it reports its actor died. A dead edge's children move to the
    live node of its tier the balancing policy picks (``BalanceConfig``); a dead device leaves the rounds (its bridge
    samples stay with its ancestors unless ``keep_dead_leaf_samples`` is false); a dead
    root is restarted from its last checkpoint. ``replace_dead`` instead replaces a dead
    non-leaf by a fresh actor restored from its checkpoint, which keeps its children;
    ``rejoin_dead_leaves`` brings a dead device back at the start of the next round,
    under the node of the tier above the balancing policy picks. Restarts (and re-joins) are capped per
    node by ``max_restarts``; re-parenting never spends them. ``checkpoint_every`` is in
    rounds.
    """

    heartbeat_interval_s: float = Field(1.0, gt=0)
    max_missed: int = Field(5, ge=1)
    restart_root: bool = True
    replace_dead: bool = False
    max_restarts: int = Field(3, ge=0)
    keep_dead_leaf_samples: bool = True
    rejoin_dead_leaves: bool = False
    checkpoint_every: int = Field(1, ge=1)


BALANCE_POLICIES = ("none", "round-robin", "least-samples", "least-busy", "label-balance")


class BalanceConfig(_Section):
    """How devices are spread over the edges (rayagg/balance.py).

    ``policy`` picks every parent a device gets: in the initial tree, when it joins,
    when its edge dies, when it re-joins, and when the edges are rebalanced, every
    ``every`` rounds (0: never; the tree changes only on those events). A rebalancing
    moves at most ``max_moves`` devices, only while the edges' predicted load is
    more than ``threshold`` x their mean (label-balance: it keeps every edge's
    samples within ``threshold`` x the mean while it mixes labels), only if the moves
    cut the spread of the edges' loads by ``min_gain`` of it (label-balance: each step
    the worst-mixed edge's misfit), and never a device that moved in the last
    ``cooldown`` rounds: the hysteresis that keeps devices from flapping.
    """

    policy: Literal["none", "round-robin", "least-samples", "least-busy", "label-balance"] = "none"
    every: int = Field(1, ge=0)
    max_moves: int = Field(2, ge=1)
    threshold: float = Field(1.2, ge=1)
    min_gain: float = Field(0.05, ge=0, lt=1)
    cooldown: int = Field(2, ge=0)

    @property
    def rebalances(self) -> bool:
        """Whether live devices may move between rounds (not with ``none`` or ``every: 0``)."""
        return self.policy != "none" and self.every > 0


class EmulationConfig(_Section):
    """Emulation for a test bench: unequal machines reproduced on one machine; off by
    default and never meant for a real cluster.

    ``slowdown`` maps a node name (``edge-0``) or a tier name (``edge``) to a factor
    >= 1: the node sleeps ``factor - 1`` times the seconds of each training step and
    logits call after it, so it takes as long as on a machine that many times slower
    without taking CPU from the others (a node's own entry wins over its tier's).
    """

    slowdown: dict[str, float] = Field(default_factory=dict)

    @field_validator("slowdown")
    @classmethod
    def _factors_at_least_one(cls, value: dict[str, float]) -> dict[str, float]:
        for key, factor in value.items():
            if not factor >= 1:
                raise ValueError(f"slowdown of {key!r} must be >= 1 (got {factor})")
        return value

    def slowdown_of(self, node: str) -> float:
        return self.slowdown.get(node, self.slowdown.get(node.rpartition("-")[0], 1.0))


class OutputConfig(_Section):
    """Where runs go. A run's directory is ``--out``, else ``<base_dir>/<name>-<timestamp>``;
    either is made absolute at launch (``~`` expanded, a relative path taken from the
    working directory) and printed. On a multi-machine cluster every host actor writes its
    nodes' checkpoints there, so it must be shared storage mounted at the same path on
    every machine: a run checks this at start-up (rayagg/rundir.py, ``probe_run_dir``)."""

    base_dir: str = "runs"

    def run_dir(self, name: str, stamp: str) -> pathlib.Path:
        """The absolute default run directory of a run called ``name`` started at ``stamp``."""
        return absolute_path(pathlib.Path(self.base_dir) / f"{name}-{stamp}")


def absolute_path(path: str | pathlib.Path) -> pathlib.Path:
    """``path`` with ``~`` expanded, made absolute against the working directory (symlinks kept:
    a shared mount is often reached through one)."""
    return pathlib.Path(os.path.abspath(pathlib.Path(path).expanduser()))


class RunConfig(_Section):
    """A whole run: the root of the YAML file."""

    name: str = "run"
    data: DataConfig = Field(default_factory=DataConfig)
    tree: TreeConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    supervision: SupervisionConfig = Field(default_factory=SupervisionConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    emulation: EmulationConfig = Field(default_factory=EmulationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _slowdown_names_nodes_or_tiers(self) -> "RunConfig":
        capacity = dict(zip((tier.name for tier in self.tree.tiers), self.tree.capacities()))
        for key in self.emulation.slowdown:
            tier, _, index = key.rpartition("-")
            if key in capacity or (tier in capacity and index.isdigit() and int(index) < capacity[tier]):
                continue
            raise ValueError(f"emulation.slowdown: {key!r} is neither a tier ({', '.join(capacity)}) "
                             "nor a node of the tree")
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
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n{_describe(exc)}") from None


def load_config(path: str | pathlib.Path) -> RunConfig:
    """Reads and validates a YAML config; raises ConfigError for a missing file or bad content."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return parse_config_text(path.read_text(), source=str(path))


def parse_config_text(text: str, source: str = "config") -> RunConfig:
    """Validates a YAML document (e.g. a config that travelled with a Ray job); raises
    ConfigError naming ``source`` for bad YAML or content."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
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
