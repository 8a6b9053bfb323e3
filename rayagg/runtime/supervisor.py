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

Silence alone does not kill (docs/failures.md, "Heartbeats under load"): a node silent
past its deadline is probed, a direct call to its host's ``probe`` in the host's own
concurrency group with a deadline of ``probe_timeout_s``; answered, the node lives;
unanswered, the next ``tick`` declares it dead. A watcher task notes the spans in which
this actor was not scheduled, which count as nobody's silence (rayagg/core/beats.py).
"""
from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from typing import Any, Iterable, Mapping, Optional

import ray

from rayagg.config import Elastic
from rayagg.core import beats, supervision
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
        # Heartbeats under load: who sent what when, the hosts to probe, this actor's stalls.
        self._senders: dict[str, beats.Sender] = {}  # host -> its beats so far
        self._host_of: dict[str, str] = {}  # node -> the host whose beat last named it
        self._handles: dict[str, Any] = {}  # host -> its actor, to probe
        self._probes = beats.Probes()
        self._awake_at = 0.0  # when this actor last ran (see _awake)
        self._stalled_s = 0.0
        self._watcher: Optional[asyncio.Task] = None
        self._tasks: set[asyncio.Task] = set()  # probes in flight
        # Heartbeat ages and deaths on Ray's metrics endpoint, from a thread every few seconds.
        self._telemetry = RunTelemetry(run)
        self._telemetry.watch_heartbeats(lambda: self._state)

    async def heartbeat(self, nodes: Iterable[str], stamp: Optional[beats.Stamp] = None,
                        host: Any = None) -> None:
        """A host's heartbeat, covering the nodes it runs; ``stamp`` says which host sent it
        and when; ``host`` (the first beat of a host) is its actor, to probe."""
        now = self._awake()
        nodes = list(nodes)
        self._state = supervision.heartbeats(self._state, nodes, now)
        if stamp is not None:
            self._senders[stamp.host] = beats.received(self._senders.get(stamp.host), stamp, now, self._state.stalls)
            self._host_of.update((node, stamp.host) for node in nodes)
            if host is not None:
                self._handles[stamp.host] = host

    async def heartbeat_ages(self) -> dict[str, float]:
        """See ``supervision.heartbeat_ages`` (the live view)."""
        return supervision.heartbeat_ages(self._state, self._awake())

    async def heartbeat_report(self) -> beats.Report:
        """What heartbeats and probes did so far (benchmarks/false_deaths.py)."""
        self._awake()
        return beats.report(self._senders, self._probes, self._stalled_s)

    async def report_death(self, nodes: Iterable[str]) -> None:
        """Calls to ``nodes`` failed because they died (their host, or they alone)."""
        for node in nodes:
            self._state = supervision.report_death(self._state, node)

    async def tick(self) -> Decision:
        """Probes the hosts of silent nodes, then decides now (see ``supervision.decide``)."""
        now = self._awake()
        policy = self._state.policy
        if policy.probe_timeout_s > 0:
            sent = self._probe_suspects(now)
            if sent:
                # A probe to a dead actor fails at once: decide on it now, not a tick later.
                await asyncio.wait(sent, timeout=min(policy.probe_timeout_s, policy.heartbeat_interval_s / 4))
                now = self._awake()
        try:
            self._state, actions = supervision.decide(self._state, now)
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

    # ------------------------------------------------------------ probes and stalls

    def _probe_suspects(self, now: float) -> list[asyncio.Task]:
        """Sends a probe to each silent node's host that has none in flight (returns them);
        a suspect no host ever named cannot be probed: it is unanswered at once."""
        hosts, unknown = beats.to_probe(supervision.suspects(self._state, now), self._host_of, self._probes)
        self._state = supervision.unanswered(self._state, unknown)
        sent = []
        for host, nodes in hosts.items():
            self._probes = self._probes.send(host, now)
            task = asyncio.get_running_loop().create_task(self._probe(host, nodes, now))
            self._tasks.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._tasks.discard)
            sent.append(task)
        return sent

    async def _probe(self, host: str, nodes: list[str], sent_at: float) -> None:
        """Asks ``host`` which of ``nodes`` it runs, within ``probe_timeout_s``; those it
        names were heard from now, the rest are unanswered."""
        answer, why = [], ""
        handle = self._handles.get(host)
        try:
            if handle is None:
                why = "no handle"
            else:
                answer = await asyncio.wait_for(handle.probe.remote(nodes), self._state.policy.probe_timeout_s)
        except asyncio.TimeoutError:
            why = f"no answer in {self._state.policy.probe_timeout_s:g} s"
        except Exception as exc:  # an actor that died, a refused call: no answer either way
            why = f"{type(exc).__name__}: {exc}"
        now = self._awake()
        alive = [node for node in nodes if node in answer]
        self._state = supervision.heartbeats(self._state, alive, now)
        self._state = supervision.unanswered(self._state, [node for node in nodes if node not in alive])
        self._probes = self._probes.done(host, answered=bool(alive))
        silent = ", ".join(nodes)
        outcome = (f"answered in {now - sent_at:.2f} s: alive" if alive else f"unanswered ({why}): dead")
        print(f"supervisor: probed {host} for {silent}, silent past {self._state.policy.deadline_s:g} s; "
              f"{outcome} (probes {self._probes.sent} sent, {self._probes.answered} answered)",
              file=sys.stderr, flush=True)

    def _awake(self) -> float:
        """Now; first notes the span since this actor was due to run, if it ran late
        (it was not scheduled: nobody's silence)."""
        now = time.monotonic()
        period = self._state.policy.heartbeat_interval_s / 2
        if self._watcher is None:
            # Started with the first call (an async actor's loop runs only from then); the
            # time before it, while the hosts start, is no stall.
            self._watcher = asyncio.get_running_loop().create_task(self._watch(period))
        else:
            span = beats.own_stall(self._awake_at, now, period, tolerance_s=period)
            if span is not None:
                self._state = supervision.stalled(self._state, *span)
                self._stalled_s += span[1] - span[0]
        self._awake_at = now
        return now

    async def _watch(self, period_s: float) -> None:
        """Wakes every ``period_s`` (half a heartbeat interval), so that a stall is noted
        even while no call comes in."""
        while True:
            await asyncio.sleep(period_s)
            self._awake()

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
