"""Which devices of an elastic leaf tier train, and how that changes between rounds.
Pure code: no Ray, no torch.

Every device the tier may ever have has a name (``device-0`` .. ``device-<max-1>``) and a
shard from the start (``Elastic.max_devices``). A device is

* **active**: in the tree and running;
* **away**: in the tree but not running: it left at a round boundary (drained: its
  bridge samples stay with its ancestors, its last checkpoint is kept) or it died;
* **unused**: it never joined; its shard waits and it is not in the tree.

:func:`plan_change` decides, before a round, who joins and who leaves: a live request
(``rayagg scale``) first, else the schedule's step for that round, else the churn model,
else the standing target (the last request's or step's count: devices lost to failures,
or that died while joining, are replaced at the next boundary), else ``min_devices``
when failures took the tier below it. The standing target lives in the driver: a
resumed run has none until the next request or step. Joins take away
devices first, lowest index first (they return with their model and name), then unused
shards, lowest index first; leaves take the highest indices first, so that packed hosts
at the end of the range empty first and an autoscaler can release their machines.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from rayagg.config import Churn, Elastic
from rayagg.nodes import index_of
from rayagg.core.tree import Tree


@dataclass(frozen=True)
class Members:
    """The tier's devices by state, each in index order."""

    active: tuple[str, ...]
    away: tuple[str, ...]
    unused: tuple[str, ...]

    @classmethod
    def of(cls, tree: Tree, dead: Iterable[str], universe: Iterable[str]) -> "Members":
        """``universe``: every name of the tier (``plan.shards``' keys)."""
        dead, universe = set(dead), sorted(universe, key=index_of)
        in_tree = set(tree.nodes_of_tier(len(tree.tier_names) - 1))
        return cls(tuple(n for n in universe if n in in_tree and n not in dead),
                   tuple(n for n in universe if n in in_tree and n in dead),
                   tuple(n for n in universe if n not in in_tree))


@dataclass(frozen=True)
class Request:
    """A live scale request as the run's supervisor holds it: a target count, when it
    arrived (``time.time()``) and what sent it."""

    devices: int
    at: float
    source: str = "rayagg scale"


@dataclass(frozen=True)
class ScaleReply:
    """The run's answer to a scale request: ``accepted`` (it applies at the next round
    boundary) or refused, and what will happen or why not."""

    accepted: bool
    message: str


@dataclass(frozen=True)
class Change:
    """Devices that join and leave at one round boundary, and why."""

    joins: tuple[str, ...] = ()
    leaves: tuple[str, ...] = ()
    reason: str = ""
    request: Optional[Request] = None
    target: Optional[int] = None  # the standing target from now on (None: none set)

    def __bool__(self) -> bool:
        return bool(self.joins or self.leaves)

    def describe(self, active: int) -> str:
        after = active + len(self.joins) - len(self.leaves)
        parts = [f"{count} {verb}" for count, verb in [(len(self.joins), "join"), (len(self.leaves), "leave")]
                 if count]
        return f"{active} -> {after} devices ({', '.join(parts)}): {self.reason}"


def plan_change(elastic: Elastic, members: Members, round_index: int,
                request: Optional[Request] = None, target: Optional[int] = None) -> Change:
    """What changes before ``round_index`` given the standing ``target``; an empty Change
    (keeping ``target``) when nothing does."""
    active = len(members.active)
    if request is not None:
        why = f"{request.source} asked for {request.devices}"
        return _with(toward(members, request.devices), why, request.devices, request)
    step = next((s for s in elastic.schedule if s.round == round_index), None)
    if step is not None:
        return _with(toward(members, step.devices), f"schedule: {step.devices} from round {step.round}",
                     step.devices)
    if elastic.churn is not None:
        return churn(members, elastic, elastic.churn, round_index)
    if target is not None and active != target:
        return _with(toward(members, target), f"back to the target of {target} after failures", target)
    if active < elastic.min_devices:
        return _with(toward(members, elastic.min_devices), f"below min_devices {elastic.min_devices}", target)
    return Change(target=target)


def toward(members: Members, target: int) -> Change:
    """The joins or leaves that make ``target`` devices active (see the module docstring
    for who goes first); ``target`` beyond the tier's names is capped there."""
    active = len(members.active)
    if target < active:
        return Change(leaves=tuple(sorted(members.active, key=index_of)[target:][::-1]))
    return Change(joins=(members.away + members.unused)[:target - active])


def churn(members: Members, elastic: Elastic, model: Churn, round_index: int) -> Change:
    """Random churn for ``round_index``: one uniform draw per name of the tier, from a
    generator seeded by (seed, round), so a seed gives the same draws every time. An
    active device leaves when its draw is below ``leave``, an away or unused one joins
    when its draw is below ``join``; the count is then held within the range (leaves
    cancelled or joins dropped, highest index first)."""
    names = sorted(members.active + members.away + members.unused, key=index_of)
    draws = dict(zip(names, np.random.default_rng([model.seed, round_index]).random(len(names))))
    leaves = [n for n in members.active if draws[n] < model.leave]
    joins = [n for n in members.away + members.unused if draws[n] < model.join]
    count = len(members.active) - len(leaves) + len(joins)
    while count < elastic.min_devices and leaves:
        leaves.pop()
        count += 1
    while count > elastic.max_devices and joins:
        joins.pop()
        count -= 1
    if count < elastic.min_devices:  # failures took the tier below its range
        missing = [n for n in members.away + members.unused if n not in joins]
        joins += missing[:elastic.min_devices - count]
    return Change(tuple(joins), tuple(sorted(leaves, key=index_of, reverse=True)),
                  f"churn (leave {model.leave:g}, join {model.join:g}, seed {model.seed})")


def _with(change: Change, reason: str, target: Optional[int], request: Optional[Request] = None) -> Change:
    return Change(change.joins, change.leaves, reason, request, target)
