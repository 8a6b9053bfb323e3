"""The supervisor actor: stamps heartbeats, and answers the runner's ``tick`` with the
pure policy's decisions (rayagg/core/supervision.py). It applies nothing itself: the runner
executes the actions, so every ``ray.kill`` and actor creation has one owner.

It is also the run's control point: ``rayagg scale`` finds it by name (``supervisor`` in
the run's namespace) and leaves a request that the runner takes at the next round
boundary (rayagg/core/membership.py). With ``capacity``, it asks the autoscaler for the
request's machines before it answers and, while the run lives, is the one caller of
``request_resources`` (each call replaces the last): the runner hands it each boundary's
plan rather than asking itself (rayagg/core/capacity.py).

It is an async actor with ``num_cpus=0``, placed on the driver's Ray node (it shares the
driver's fate, not a worker machine's): heartbeats never queue behind anything, and
it needs no CPU reservation.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Mapping, Optional

import ray

from rayagg.config import Elastic
from rayagg.core import supervision
from rayagg.core.actions import Decision, FailurePolicy, NoSurvivorError
from rayagg.core.balance import BalancingPolicy
from rayagg.core.capacity import Capacity
from rayagg.core.membership import Request, ScaleReply
from rayagg.core.supervision import SupervisorState
from rayagg.core.tree import Tree
from rayagg.runtime import capacity as autoscaler
from rayagg.runtime.telemetry import RunTelemetry


@ray.remote(num_cpus=0, max_restarts=0)
class SupervisorActor:
    """One per run, named ``supervisor`` in the run's namespace."""

    def __init__(self, tree: Tree, policy: FailurePolicy, balancing: BalancingPolicy, load: Mapping[str, int],
                 labels: Mapping[str, tuple[int, ...]], *, dead: frozenset[str] = frozenset(),
                 left: frozenset[str] = frozenset(), elastic: Optional[Elastic] = None, round_index: int = 0,
                 run: str = "", capacity: Optional[Capacity] = None):
        state = SupervisorState.start(tree, time.monotonic(), policy=policy, load=load, balancing=balancing,
                                      labels=labels)
        self._state = dataclasses.replace(state, dead=frozenset(dead), left=frozenset(left))
        self._elastic = elastic
        self._request: Optional[Request] = None
        self._round, self._rounds = round_index, 0  # the round in flight (or done) and the run's last
        self._capacity = capacity  # None: the autoscaler is not asked ahead
        self._planned = frozenset(n for n in tree.nodes if n not in self._state.dead)  # the runner's last plan
        # Heartbeat ages and deaths on Ray's metrics endpoint, from a thread every few seconds.
        self._telemetry = RunTelemetry(run)
        self._telemetry.watch_heartbeats(lambda: self._state)

    async def heartbeat(self, nodes: Iterable[str]) -> None:
        """A host's heartbeat, covering the nodes it runs."""
        self._state = supervision.heartbeats(self._state, nodes, time.monotonic())

    async def heartbeat_ages(self) -> dict[str, float]:
        """See ``supervision.heartbeat_ages`` (the live view)."""
        return supervision.heartbeat_ages(self._state, time.monotonic())

    async def report_death(self, nodes: Iterable[str]) -> None:
        """Calls to ``nodes`` failed because they died (their host, or they alone)."""
        for node in nodes:
            self._state = supervision.report_death(self._state, node)

    async def tick(self) -> Decision:
        """Decides now (see ``supervision.decide``)."""
        try:
            self._state, actions = supervision.decide(self._state, time.monotonic())
        except NoSurvivorError as exc:
            return self._answer([], fatal=str(exc))
        return self._answer(actions)

    async def rejoin(self, node: str) -> Decision:
        """A dead leaf comes back (see ``supervision.rejoin``); same answer as ``tick``."""
        try:
            self._state, action = supervision.rejoin(self._state, node, time.monotonic())
        except NoSurvivorError as exc:
            return self._answer([], fatal=str(exc))
        return self._answer([action])

    async def change_membership(self, joins: Mapping[str, int], leaves: Iterable[str]) -> Decision:
        """Elastic devices leave, then join (node -> its bridge-sample count); see
        ``supervision.leave`` and ``supervision.join``."""
        actions = []
        try:
            for node in leaves:
                self._state, action = supervision.leave(self._state, node)
                actions.append(action)
            for node, samples in joins.items():
                self._state, action = supervision.join(self._state, node, samples, time.monotonic())
                actions.append(action)
        except NoSurvivorError as exc:
            return self._answer(actions, fatal=str(exc))
        return self._answer(actions)

    async def rebalance(self, round_index: int, busy_s: Mapping[str, float]) -> Decision:
        """The balancing policy's moves before ``round_index`` (see ``supervision.rebalance``)."""
        self._state, actions = supervision.rebalance(self._state, round_index, busy_s)
        return self._answer(actions)

    # ------------------------------------------------------------ scale requests

    async def request_scale(self, devices: Optional[int] = None, add: Optional[int] = None,
                            remove: Optional[int] = None) -> ScaleReply:
        """A live request for the elastic tier (``rayagg scale``): exactly one of a target
        count, a number to add or to remove (relative to a request still pending, else to
        the devices active now). A refused request changes nothing."""
        if self._elastic is None:
            return _refused("this run's leaf tier is not elastic (no tree.tiers[-1].elastic in its config)")
        if self._rounds and self._round >= self._rounds:
            return _refused(f"the run is in its last round ({self._round} of {self._rounds}): "
                            "no round boundary is left to apply a change at")
        active = self._active()
        base = self._request.devices if self._request else active
        target = devices if devices is not None else base + (add or 0) - (remove or 0)
        low, high = self._elastic.min_devices, self._elastic.max_devices
        if not low <= target <= high:
            asked = (f"asked for {target} devices" if devices is not None else
                     f"adding {add} devices to {base} would make {target}" if add is not None else
                     f"removing {remove} devices from {base} would leave {target}")
            return _refused(f"{asked}; the range is [{low}, {high}]")
        self._request = Request(target, time.time())
        asked = "; their machines are asked for now" if self._ask_capacity() and target > active else ""
        return ScaleReply(True, f"{active} devices active now; {target} from the start of round "
                                f"{self._round + 1} (changes wait for a round boundary{asked})")

    async def take_request(self, round_index: int, rounds: int) -> Optional[Request]:
        """The runner, at the boundary before ``round_index`` of ``rounds``: the pending
        request, if any, which it now applies."""
        self._round, self._rounds = round_index, rounds
        request, self._request = self._request, None
        return request

    async def plan_capacity(self, nodes: frozenset[str]) -> None:
        """The runner, at a round boundary: the nodes that run from now (and a schedule
        step's a round ahead); asks the autoscaler for them and a pending request's."""
        self._planned = frozenset(nodes)
        self._ask_capacity()

    def _ask_capacity(self) -> bool:
        """Makes the runner's plan plus the pending request's devices the cluster's standing
        request; returns whether one was made."""
        if self._capacity is None:
            return False
        nodes = self._planned
        if self._request is not None:
            nodes |= self._capacity.requested(self._state.tree, self._state.dead, self._request.devices)
        return autoscaler.request(self._capacity.demand(nodes))

    def _active(self) -> int:
        tree = self._state.tree
        return sum(1 for n in tree.nodes_of_tier(len(tree.tier_names) - 1) if n not in self._state.dead)

    def _answer(self, actions: list, fatal: Optional[str] = None) -> Decision:
        return Decision(tuple(actions), self._state.tree, self._state.dead, self._state.left, fatal)


def _refused(message: str) -> ScaleReply:
    return ScaleReply(False, message)
