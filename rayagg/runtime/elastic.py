"""Elastic devices on Ray: who joins and leaves between rounds, and how a joiner enters.

What changes is decided in pure code (rayagg/core/membership.py) from a pending ``rayagg
scale`` request, the schedule or churn; this module applies it at a round boundary.
Leavers stop (their hosts, if emptied, go, which lets an autoscaler release their
machines). A joining device is built on its host and encodes (new) or restores its
checkpoint (returning) before the supervisor puts it in the tree, so a device that
dies while joining never enters it; its samples then travel up like everyone's.

A scale-up's machines are asked for before the boundary (rayagg/core/capacity.py): the
supervisor asks when it accepts a ``rayagg scale`` request, and at each boundary this
module plans the tree about to run plus the devices of a schedule step a round ahead,
so the machines boot while the round in flight trains.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from rayagg.core import membership
from rayagg.core.capacity import Capacity, Demand, requests_capacity
from rayagg.core.events import EventKind
from rayagg.core.membership import Change, Members
from rayagg.rundir import store
from rayagg.runtime import capacity as autoscaler

if TYPE_CHECKING:
    from rayagg.runtime.runner import RayRunner


class ElasticDevices:
    """The elastic leaf tier of ``runner``'s run, and its standing target (the count the
    last request or schedule step asked for; a resumed run has none until the next)."""

    def __init__(self, runner: "RayRunner"):
        self._runner = runner
        self._target: Optional[int] = None
        config = runner.plan.config
        self._capacity = Capacity.of(config) if requests_capacity(config) else None

    def plan(self, round_index: int) -> Change:
        """Who joins and leaves before ``round_index``: a pending ``rayagg scale`` request,
        the schedule or churn. Empty for a fixed tree."""
        runner = self._runner
        elastic = runner.plan.config.tree.elastic
        if elastic is None:
            return Change()
        runner.repair()
        request = runner.recovery.take_request(round_index, runner.plan.config.training.rounds)
        change = membership.plan_change(elastic, self.members(), round_index, request, self._target)
        self._target = change.target
        self._plan_capacity(round_index, change)  # before joining: machines boot meanwhile
        if change:
            runner.record_event(EventKind.MEMBERSHIP, "", change.describe(len(self.members().active)))
        return change

    def _plan_capacity(self, round_index: int, change: Change) -> None:
        """Asks for the tree that runs from ``round_index`` on, plus the devices of a
        schedule step at the round after it (through the supervisor, the one caller)."""
        if self._capacity is None:
            return
        runner = self._runner
        ahead = round_index + 1
        step = next((s.devices for s in runner.plan.config.tree.elastic.schedule if s.round == ahead), None)
        step = step if ahead <= runner.plan.config.training.rounds else None
        runner.recovery.plan_capacity(self._capacity.planned(runner.tree, runner.dead, change, step))

    def release(self) -> None:
        """Withdraws the run's standing request for machines (the run ends)."""
        if self._capacity is not None:
            autoscaler.request(Demand())

    def members(self) -> Members:
        return Members.of(self._runner.tree, self._runner.dead, self._runner.plan.shards)

    def apply(self, change: Change) -> None:
        """Leavers stop; joiners are built, encode (new) or restore their checkpoint
        (returning), enter the tree under the parent the balancing policy picks, and
        their samples travel up."""
        if change.leaves:
            self._runner.recovery.change_membership({}, list(change.leaves))
        if change.joins:
            self._join(list(change.joins), change.request)
        self._runner.repair()

    def _join(self, nodes: list[str], request: Optional[membership.Request]) -> None:
        runner, started = self._runner, time.time()
        returning = {node for node in nodes if node in runner.tree.tier_of}
        runner.hosts.revive(nodes)
        encoding = runner.method.carries_bridge_samples  # else a new device brings only itself
        calls = [runner.hosts.call(node, "encode") for node in nodes if node not in returning and encoding]
        calls += [call for call in map(runner.restore_call, sorted(returning)) if call is not None]
        settled = runner.settle(calls, context="joining")
        failed = [node for node in nodes if node in settled.died]
        for node in failed:
            runner.record_event(EventKind.JOIN_FAILED, node, f"{node} died while joining; it stays away")
        runner.hosts.retire(failed)
        ready = [node for node in nodes if node not in settled.died]
        encoded = {call.node: call.ref for call in calls if call.node in ready and call.node not in returning}
        runner.recovery.change_membership({n: runner.plan.shard_sizes[n] for n in ready}, [])
        runner.bridge.joined(encoded)
        for node in returning & set(ready):
            runner.bridge.forget(node)  # built afresh: it holds nothing, not even its own samples
        if encoded and runner.run_dir is not None:
            path = store.joined_store_path(runner.run_dir, runner.round_index + 1)
            runner.store_bridge_samples([settled.values[n] for n in encoded], path)
        runner.repair()  # the joined samples travel up the tree
        waited = f"; requested {started - request.at:.1f} s before" if request else ""
        runner.record_event(EventKind.MEMBERSHIP, "", f"{len(ready)} device(s) joined in "
                                                      f"{time.time() - started:.1f} s{waited}")
