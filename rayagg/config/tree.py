"""The tree's shape in the run configuration: tiers, their models, resources, packing and
the elastic leaf tier. Model names are checked here without building a model (no torch:
rayagg/learning/models.py builds them)."""
from __future__ import annotations

import importlib
import re
from typing import Callable, Optional

from pydantic import Field, field_validator, model_validator

from rayagg.config.sections import SEED_RANGE, Float, Int, _Section
from rayagg.errors import ConfigError

_TIER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
BUILTIN_MODELS = ("cnn", "resnet10", "resnet18", "resnet10-imagenet", "resnet18-imagenet")
# "module:attr" where module may be dotted; both parts are Python identifiers.
_FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def resolve_factory(name: str) -> Callable[..., object]:
    """Return the callable named by ``"package.module:function"``.

    Raises ConfigError (naming ``name``) if the string is malformed, the module
    does not import, or the attribute is missing or not callable.
    """
    if not _FACTORY_RE.match(name):
        raise ConfigError(
            f"model {name!r}: not a builtin {BUILTIN_MODELS} "
            f"nor of the form 'package.module:function'"
        )
    module_name, attr = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # user code: any import-time failure is a config fault
        raise ConfigError(f"model {name!r}: cannot import module {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(f"model {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise ConfigError(f"model {name!r}: {attr!r} is not callable")
    return factory


def check_model_name(name: str) -> None:
    """Validate a model name without building it.

    Returns None if ``name`` is a builtin or a well-formed ``"a.b:c"`` whose
    module imports and has a callable attribute ``c``; raises ConfigError otherwise.
    """
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {name!r}")
    if name in BUILTIN_MODELS:
        return
    resolve_factory(name)


class Resources(_Section):
    """What one node of a tier asks Ray for; a host actor carrying several nodes asks
    for the sum of its nodes' requests (see ``Tier.nodes_per_actor``)."""

    num_cpus: Float = Field(1.0, ge=0)
    num_gpus: Float = Field(0.0, ge=0)
    memory_mb: Optional[Int] = Field(None, ge=1)
    custom: dict[str, Float] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    # torch's intra-op threads for the tier's host actor; None: the host's num_cpus (at
    # least one). More than num_cpus lets a node on the round's critical path (the cloud)
    # use cores that Ray counts as the other tiers' but that idle while they wait for it
    # (docs/benchmarks.md, "Speed"); Ray does not reserve them, so it is oversubscription.
    torch_threads: Optional[Int] = Field(None, ge=1)

    @field_validator("custom")
    @classmethod
    def _custom_non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for key, amount in value.items():
            if amount < 0:
                raise ValueError(f"custom resource {key!r} must be >= 0 (got {amount})")
        return value


class ScheduleStep(_Section):
    """From round ``round`` on, the elastic tier aims for ``devices`` active devices."""

    round: Int = Field(ge=1)
    devices: Int = Field(ge=1)


class Churn(_Section):
    """Random churn: before each round every active device leaves with probability
    ``leave`` and every device of the range that is away (left, failed or never joined)
    joins with probability ``join``. Drawn from ``seed`` and the round number alone, so a
    seed gives the same membership every time; the count stays within the range."""

    leave: Float = Field(ge=0, le=1)
    join: Float = Field(ge=0, le=1)
    seed: Int = Field(0, **SEED_RANGE)


class Elastic(_Section):
    """The leaf tier's membership changes between rounds (rayagg/core/membership.py).

    The data set is partitioned once into ``max_devices`` shards, one per possible device
    (``device-0`` .. ``device-<max-1>``); the tier's ``count`` devices are active at
    start. Joins and leaves happen at round boundaries, from ``rayagg scale`` requests,
    the ``schedule`` or the ``churn`` model (one of the two at most). With
    ``runtime.autoscaling``, ``request_resources`` asks the autoscaler for a scale-up's
    machines as soon as it is known (a request, or a schedule step one round ahead), so
    they boot while the round in flight trains (rayagg/core/capacity.py); false leaves
    the autoscaler to see the new hosts only when they start at the round boundary.
    """

    min_devices: Int = Field(ge=1)
    max_devices: Int = Field(ge=1)
    schedule: list[ScheduleStep] = Field(default_factory=list)
    churn: Optional[Churn] = None
    request_resources: bool = True

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
    count: Optional[Int] = Field(None, ge=1)
    fanout: Optional[Int] = Field(None, ge=1)
    nodes_per_actor: Int = Field(1, ge=1)
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


