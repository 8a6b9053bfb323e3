"""The supervisor actor: stamps heartbeats, and answers the runner's ``tick`` with the
pure policy's decisions (rayagg/supervision.py). It applies nothing itself: the runner
executes the actions, so every ``ray.kill`` and actor creation has one owner.

It is an async actor with ``num_cpus=0``, placed on the driver's Ray node (it shares the
driver's fate, not a worker machine's): heartbeats never queue behind anything, and
it needs no CPU reservation.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Mapping, Optional

import ray

from rayagg import supervision
from rayagg.supervision import Decision, NoSurvivorError, Policy, SupervisorState
from rayagg.tree import Tree


@ray.remote(num_cpus=0, max_restarts=0)
class SupervisorActor:
    """One per run, named ``supervisor`` in the run's namespace."""

    def __init__(self, tree: Tree, policy: Policy, load: Mapping[str, int],
                 dead: frozenset[str] = frozenset()):
        state = SupervisorState.start(tree, time.monotonic(), policy=policy, load=load)
        self._state = dataclasses.replace(state, dead=frozenset(dead))

    async def heartbeat(self, nodes: Iterable[str]) -> None:
        """A host's heartbeat, covering the nodes it runs."""
        self._state = supervision.heartbeats(self._state, nodes, time.monotonic())

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

    def _answer(self, actions: list, fatal: Optional[str] = None) -> Decision:
        return Decision(tuple(actions), self._state.tree, self._state.dead, fatal)
