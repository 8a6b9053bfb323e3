"""The run configuration's sections other than the tree (rayagg/config/tree.py): data,
training, autoencoder, runtime, supervision, balance, emulation, output.

Every section is a frozen pydantic model that forbids unknown keys, so a typo is an
error naming the key rather than a silently ignored setting. Pydantic earns its place
here: it reports every bad field with its dotted path and value in one pass, which a
hand-written validator would have to re-implement.
"""
from __future__ import annotations

import os
import pathlib
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator, model_validator

from rayagg.nodes import tier_of
from rayagg.storage import RunPath, StorePath, as_path, is_uri


def _not_a_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


# Every count, size and seed: an int and nothing else. Pydantic would read YAML's `true`
# as 1 (`rounds: true`, one round), a float such as 2.0 as 2 and "3" as 3.
Int = Annotated[int, Strict()]
# Every other number: an int or a float, or a string that reads as one (PyYAML reads
# `1e-3` as a string), never a boolean (`lr: true` would train at 1.0).
Float = Annotated[float, BeforeValidator(_not_a_bool)]

MAX_ROUNDS = 1_000_000  # training.rounds: a round takes a second at the very least, so 11+ days
# Seeds feed numpy's generators (non-negative) and torch.manual_seed (at most 64 bits).
SEED_RANGE = {"ge": 0, "lt": 2 ** 63}


class _Section(BaseModel):
    # allow_inf_nan=False: YAML reads `.inf` and `.nan` as floats, and no knob here has a
    # meaning for them (an lr of nan would only show up rounds later as a nan loss).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Where the host actors get their data (DataConfig.source).
DATA_SOURCES = ("driver", "local")


class DataConfig(_Section):
    """Which data set, how much of it, how it is split over the leaves, and where the
    host actors get it.

    ``source: driver`` (the default) has the driver, which loads the data set anyway to
    split it, ship each host its leaves' shards and the test split through Ray's object
    store: a cluster then needs the data set on the driver's machine only, which any
    cluster has. ``source: local`` has every host read its own copy (``root`` on its own
    machine): for real on-device data that must not leave the machine. Both give every
    node the same data, so the same results.
    """

    dataset: Literal["fashion-mnist", "cifar10", "cifar100"] = "fashion-mnist"
    source: Literal[DATA_SOURCES] = "driver"
    root: Optional[str] = None
    download: bool = False
    coarse_labels: bool = False
    partition: Literal["dirichlet", "iid"] = "dirichlet"
    alpha: Float = Field(1.0, gt=0)
    min_samples_per_device: Int = Field(10, ge=1)
    train_samples: Optional[Int] = Field(None, ge=1)
    test_samples: Optional[Int] = Field(None, ge=1)
    public_samples: Int = Field(5000, ge=1)

    @model_validator(mode="after")
    def _coarse_only_for_cifar100(self) -> "DataConfig":
        if self.coarse_labels and self.dataset != "cifar100":
            raise ValueError(f"coarse_labels applies to cifar100 only (dataset is {self.dataset!r})")
        return self


class TrainingConfig(_Section):
    """Rounds, optimizer and the BSBODP loss settings (T, beta, gamma)."""

    rounds: Int = Field(5, ge=1, le=MAX_ROUNDS)
    lr: Float = Field(0.01, gt=0)
    momentum: Float = Field(0.9, ge=0, lt=1)
    weight_decay: Float = Field(5e-4, ge=0)
    batch_size: Int = Field(16, ge=2)
    temperature: Float = Field(3.0, gt=0)
    beta: Float = Field(10.0, ge=0)
    gamma: Float = Field(1.0, ge=0)
    teacher_mode: Literal["train", "eval"] = "train"
    seed: Int = Field(0, **SEED_RANGE)


# The training methods a run may use (rayagg/methods/ implements one module per name).
METHODS = ("fedagg", "hierfavg", "local")


def _name_alone(value: object) -> object:
    """``method: hierfavg`` is short for ``method: {name: hierfavg}``."""
    return {"name": value} if isinstance(value, str) else value


class MethodConfig(_Section):
    """Which training method runs on the tree (rayagg/methods/; docs/methods.md).

    ``fedagg`` (the default) is FedAgg's bidirectional distillation on bridge samples.
    ``hierfavg`` is hierarchical weight averaging (Liu et al., 2020): each device trains
    on its own data for ``kappa1`` epochs, each edge averages its devices' weights
    (weighted by samples), and after ``kappa2`` such edge aggregations the cloud averages
    the edges' weights and the result goes back down; a round is one cloud aggregation.
    ``local`` has each device train ``kappa1`` epochs a round on its own data alone, with
    no exchange: the floor every method should beat. ``kappa1`` and ``kappa2`` are read
    by the methods that name them and ignored by ``fedagg``.
    """

    name: Literal[METHODS] = "fedagg"
    kappa1: Int = Field(1, ge=1)
    kappa2: Int = Field(2, ge=1)


class AutoencoderConfig(_Section):
    """The frozen bridge autoencoder, pretrained once on the public slice and cached."""

    epochs: Int = Field(5, ge=1)
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

    round_timeout_s: Float = Field(1800.0, gt=0)
    startup_timeout_s: Float = Field(300.0, gt=0)
    autoscaling: bool = False
    rounds_in_flight: Int = Field(2, ge=1)


class SupervisionConfig(_Section):
    """Heartbeats, failure detection and recovery (see rayagg/core/supervision.py).

    A node silent for ``heartbeat_interval_s * max_missed`` seconds is probed: a direct
    call to its host that must answer within ``probe_timeout_s``; it is dead if no answer
    comes (0: no probe, silence alone kills), or at once when a call to it reports its
    actor died. A dead edge's children move to the
    live node of its tier the balancing policy picks (``BalanceConfig``); a dead device leaves the rounds (its bridge
    samples stay with its ancestors unless ``keep_dead_leaf_samples`` is false); a dead
    root is restarted from its last checkpoint. ``replace_dead`` instead replaces a dead
    non-leaf by a fresh actor restored from its checkpoint, which keeps its children;
    ``rejoin_dead_leaves`` brings a dead device back at the start of the next round,
    under the node of the tier above the balancing policy picks. Restarts (and re-joins) are capped per
    node by ``max_restarts``; re-parenting never spends them. A round that loses a node is
    retried on the repaired tree up to ``round_retries`` times before the run fails.
    ``checkpoint_every`` is in rounds.
    """

    heartbeat_interval_s: Float = Field(1.0, gt=0)
    max_missed: Int = Field(5, ge=1)
    restart_root: bool = True
    replace_dead: bool = False
    max_restarts: Int = Field(3, ge=0)
    probe_timeout_s: Float = Field(10.0, ge=0)
    keep_dead_leaf_samples: bool = True
    rejoin_dead_leaves: bool = False
    checkpoint_every: Int = Field(1, ge=1)
    round_retries: Int = Field(1, ge=1)


# The balancing policies (rayagg/core/balance.py implements one class per name, in this order).
BALANCE_POLICIES = ("none", "round-robin", "least-samples", "least-busy", "label-balance")


class BalanceConfig(_Section):
    """How devices are spread over the edges (rayagg/core/balance.py).

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

    policy: Literal[BALANCE_POLICIES] = "none"
    every: Int = Field(1, ge=0)
    max_moves: Int = Field(2, ge=1)
    threshold: Float = Field(1.2, ge=1)
    min_gain: Float = Field(0.05, ge=0, lt=1)
    cooldown: Int = Field(2, ge=0)

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

    slowdown: dict[str, Float] = Field(default_factory=dict)

    @field_validator("slowdown")
    @classmethod
    def _factors_at_least_one(cls, value: dict[str, float]) -> dict[str, float]:
        for key, factor in value.items():
            if not factor >= 1:
                raise ValueError(f"slowdown of {key!r} must be >= 1 (got {factor})")
        return value

    def slowdown_of(self, node: str) -> float:
        return self.slowdown.get(node, self.slowdown.get(tier_of(node), 1.0))


class OutputConfig(_Section):
    """Where runs go. A run's directory is ``--out``, else ``<base_dir>/<name>-<timestamp>``;
    either is made absolute at launch (``~`` expanded, a relative path taken from the
    working directory) and printed; either may be an object-store URI (``s3://bucket/prefix``,
    ``gs://...``: rayagg/storage.py). On a multi-machine cluster every host actor writes its
    nodes' checkpoints there, so it must be shared storage mounted at the same path on
    every machine, or a URI: a run checks this at start-up (``rayagg.rundir.directory.probe_run_dir``)."""

    base_dir: str = "runs"

    def run_dir(self, name: str, stamp: str) -> RunPath:
        """The absolute default run directory of a run called ``name`` started at ``stamp``."""
        if is_uri(self.base_dir):
            return as_path(self.base_dir) / f"{name}-{stamp}"
        return absolute_path(pathlib.Path(self.base_dir) / f"{name}-{stamp}")


def absolute_path(path: str | pathlib.Path | StorePath) -> RunPath:
    """``path`` with ``~`` expanded, made absolute against the working directory (symlinks kept:
    a shared mount is often reached through one); an object-store URI as a StorePath."""
    if is_uri(path):
        return as_path(path)
    return pathlib.Path(os.path.abspath(pathlib.Path(path).expanduser()))


