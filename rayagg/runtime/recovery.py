"""Recovery: the supervisor's decisions, applied.

The runner polls the supervisor while it waits on a batch of calls. A decision is
applied in two steps so that no wait ever runs inside another: :meth:`Recovery.absorb`
(during the wait) takes the new tree and dead set and stops the dead nodes at once,
which fails their pending calls fast; :meth:`Recovery.repair` (after the wait) starts
the restarts and re-joins, restores their checkpoints and moves bridge samples.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import ray
from ray import exceptions as ray_errors

from rayagg.config import SupervisionConfig
from rayagg.core.actions import (Action, DeclareDead, Decision, DropLeaf, Join, Leave, Rebalance, Rejoin, Reparent,
                                 Restart)
from rayagg.core.events import EventKind
from rayagg.core.tree import Tree
from rayagg.core.verdicts import await_verdicts
from rayagg.errors import NodeDiedError, NodeTimeoutError, RecoveryError
from rayagg.runtime.bridge import BridgeRoutes
from rayagg.runtime.hosts import HostPool


APPLIED = (DeclareDead, Reparent, DropLeaf, Restart, Rejoin, Join, Leave, Rebalance)  # every action kind


class Recovery:
    """Owns the tree, the dead set and the devices that left, as the supervisor last
    decided them."""

    def __init__(self, supervisor: Any, hosts: HostPool, bridge: BridgeRoutes, tree: Tree,
                 dead: frozenset[str], left: frozenset[str], *, timeout_s: float,
                 log: Callable[[EventKind, str, str], None], restore: Callable[[str], None]):
        self.supervisor = supervisor
        self.tree, self.dead, self.left = tree, dead, left
        self._hosts, self._bridge = hosts, bridge
        self._timeout_s = timeout_s
        self._log, self._restore = log, restore
        self._repairs: list[Action] = []

    # ------------------------------------------------------------ asking

    def tick(self) -> None:
        """Asks the supervisor to decide now and absorbs its decision."""
        self.absorb(self._ask(self.supervisor.tick.remote()))

    def rejoin(self, leaf: str) -> None:
        self.absorb(self._ask(self.supervisor.rejoin.remote(leaf)))

    def change_membership(self, joins: dict[str, int], leaves: list[str]) -> None:
        """Elastic devices leave, then join (node -> bridge-sample count) at a round boundary."""
        self.absorb(self._ask(self.supervisor.change_membership.remote(joins, leaves)))

    def rebalance(self, round_index: int, busy_s: dict[str, float]) -> None:
        """The balancing policy moves devices before ``round_index`` (see
        ``supervision.rebalance``); ``repair`` then moves their bridge samples."""
        self.absorb(self._ask(self.supervisor.rebalance.remote(round_index, busy_s)))

    def take_request(self, round_index: int, rounds: int):
        """The pending ``rayagg scale`` request (a membership.Request), or None."""
        return self._ask(self.supervisor.take_request.remote(round_index, rounds))

    def plan_capacity(self, nodes: frozenset[str]) -> None:
        """Tells the supervisor which nodes run from this boundary on (and a round ahead),
        for the autoscaler's standing request (rayagg/core/capacity.py)."""
        self._ask(self.supervisor.plan_capacity.remote(nodes))

    def report(self, nodes: Iterable[str]) -> None:
        """Tells the supervisor that calls showed ``nodes`` dead (nodes outside the tree, a
        device still joining, are left out). Synchronous: an async actor may run calls out
        of order, and a report that overtook the next tick would kill the node's
        replacement."""
        nodes = sorted(n for n in nodes if n in self.tree.tier_of)
        if nodes:
            self._ask(self.supervisor.report_death.remote(nodes))

    def heartbeat_ages(self) -> dict[str, float]:
        """Live node -> seconds since its last heartbeat (``supervision.heartbeat_ages``)."""
        return self._ask(self.supervisor.heartbeat_ages.remote())

    def await_verdicts(self, since: float, supervision: SupervisionConfig) -> frozenset[str]:
        """Waits until every live node has been heard from since ``since`` or declared dead
        (rayagg/core/verdicts.py), so that a retry does not go to a host that died with the
        failed ones (the same machine) but had no call pending to show it. A silent node's
        verdict takes its silence deadline plus, at most, its probe's (supervision.py); with
        every node alive the wait ends at their next heartbeat. Returns the live nodes still
        unheard at the deadline (the retry goes out anyway and names them in its event)."""
        interval_s = supervision.heartbeat_interval_s
        deadline_s = interval_s * (supervision.max_missed + 1) + supervision.probe_timeout_s
        return await_verdicts(since=since, deadline_s=deadline_s, poll_s=interval_s / 4,
                              tick=self.tick, ages=self.heartbeat_ages)

    def _ask(self, ref: Any) -> Any:
        try:
            return ray.get(ref, timeout=self._timeout_s)
        except ray_errors.RayActorError as exc:
            raise NodeDiedError("supervisor", "the supervisor actor died; the run cannot "
                                              "detect failures without it") from exc
        except ray_errors.GetTimeoutError as exc:
            raise NodeTimeoutError("supervisor", f"did not answer within {self._timeout_s:g} s") from exc

    # ------------------------------------------------------------ applying

    def absorb(self, decision: Decision) -> None:
        """Takes the decided tree and dead set, logs every action and stops the nodes declared
        dead; restarts and re-joins wait for :meth:`repair`. Raises RecoveryError when the
        decision is fatal."""
        if decision.fatal:
            raise RecoveryError(decision.fatal)
        if decision.tree != self.tree:  # an equal tree keeps the old one's cached indexes
            self.tree = decision.tree
        self.dead, self.left = decision.dead, decision.left
        for action in decision.actions:
            if not isinstance(action, APPLIED):
                raise TypeError(f"unknown action {action!r}")
            self._log(action.kind, action.node, action.describe())
        self._hosts.retire(a.node for a in decision.actions if isinstance(a, (DeclareDead, Leave)))
        self._repairs += decision.actions

    @property
    def needs_repair(self) -> bool:
        return bool(self._repairs)

    def repair(self, sync: Callable[[], None]) -> None:
        """Brings restarted and re-joined nodes back (fresh, then restored from their last
        checkpoint) and calls ``sync`` to move bridge samples after the tree changed;
        repeats while that wait brought new decisions. A node whose host dies while it is
        brought back (``restore`` must report such a death too) is reported dead and
        decided on like any other."""
        while self._repairs:
            actions, self._repairs = self._repairs, []
            revived = [a.node for a in actions if isinstance(a, (Restart, Rejoin)) and a.node not in self.dead]
            lost = self._hosts.revive(revived)
            for node in revived:
                self._bridge.forget(node)
                if node not in lost:
                    self._restore(node)
            if lost:  # a host died before it ran: its nodes die again (and may restart again)
                self.report(lost)
                self.tick()
                if self._repairs:
                    continue  # bring back what was restarted again before any call goes to it
            sync()
