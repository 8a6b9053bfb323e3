"""RayRunner: the tree on Ray host actors, driven and supervised from the driver process.

Design, from RAY_NOTES.md:

* The driver creates every host actor (rayagg/runtime/hosts.py: one node per actor by
  default, ``nodes_per_actor`` packs more) and the supervisor, so no actor's death
  takes another with it.
* The driver calls ``encode`` on the leaves and so owns every bridge sample's object
  ref; parents receive the refs of their subtree as arguments. When an edge dies, its
  orphans' samples are re-sent to their new parent from those refs
  (rayagg/runtime/bridge.py): nothing is asked of the dead node, no sample is lost.
* A round is submitted as one graph of calls (rayagg/schedule.py): logits refs feed
  ``learn`` calls directly, and every node's evaluation (and checkpoint, when due)
  follows its round's work. Ray runs one caller's calls to a host in submission order,
  so every node does the same work in the same order as the sequential driver, while
  independent hosts run at the same time. No barrier between rounds: up to
  ``runtime.rounds_in_flight`` rounds are submitted before the oldest is collected, so
  an edge trains its next round with its devices while the cloud still works with
  other edges; the loop drains them before anything changes the tree.
* Waits poll the supervisor every heartbeat interval; its decisions are applied by
  rayagg/runtime/recovery.py (deaths at once, restarts and sample moves after the
  wait). A round that loses a node is retried once on the repaired tree, with the
  rounds in flight after it; pairs that had finished before the failure train again.
* Every wait has a deadline; Ray's exceptions become the project's errors naming the
  node and the call (rayagg/runtime/waiting.py).
* Elastic devices join and leave between rounds (:meth:`RayRunner.change_membership`):
  a joining device is built on its host and encodes (or, returning, restores its
  checkpoint) before the supervisor puts it in the tree, so a device that dies while
  joining never enters it; its samples then travel up like everyone's.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import ray

from rayagg import live, membership, rundir, store
from rayagg.errors import RecoveryError
from rayagg.events import Event, EventKind
from rayagg.membership import Change, Members
from rayagg.plan import Plan, balancing_policy
from rayagg.rundir import RunState, expected_bridge_counts
from rayagg.schedule import EVALUATE, LEARN, LOGITS, SAVE, RoundResult, Step, logit_bytes, round_steps
from rayagg.runtime.bridge import BridgeRoutes, training_leaves
from rayagg.runtime.cluster import cluster_nodes, connect, on_driver_node
from rayagg.runtime.hosts import HostPool
from rayagg.runtime.ray_logs import keep_logs
from rayagg.runtime.recovery import Recovery
from rayagg.runtime.resources import check_cluster
from rayagg.runtime.supervisor import SupervisorActor
from rayagg.runtime.telemetry import RunTelemetry
from rayagg.runtime.waiting import Call, Death, Settled, await_all, kill, settle
from rayagg.supervision import Policy

LIVE_EVERY_S = 2.0  # how often, at most, the driver rewrites RUN_DIR/live.json while it waits


class RayRunner:
    """Runs ``plan``'s tree on Ray; see the module docstring for the design."""

    def __init__(self, plan: Plan, *, address: Optional[str] = None,
                 namespace: Optional[str] = None, verbose: bool = False):
        self.plan = plan
        self.events: list[Event] = []
        self.round_index = 0
        self._address = address
        self._verbose = verbose  # Ray's own output on this terminal (ray_logs.py)
        self._runtime = plan.config.runtime
        self._supervision = plan.config.supervision
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.namespace = namespace or f"rayagg-{plan.config.name}-{stamp}-{os.getpid()}"
        self.hosts = HostPool(plan, self.namespace, heartbeat_interval_s=self._supervision.heartbeat_interval_s,
                              timeout_s=self._runtime.startup_timeout_s)
        self.bridge = BridgeRoutes(self._supervision.keep_dead_leaf_samples)
        self._tree, self._dead, self._left = plan.tree, frozenset(), frozenset()
        self.recovery: Optional[Recovery] = None
        self.checkpoint: Optional[RunState] = None  # the last complete cut: restores read it
        self.bridge_stores: list[pathlib.Path] = []  # durable copies of every bridge sample
        self._target: Optional[int] = None  # the elastic tier's standing target (membership.py)
        self._run_dir: Optional[pathlib.Path] = None
        self._started_ray = False
        self._connected = False
        self._in_flight: deque[_InFlight] = deque()  # submitted, not yet collected, oldest first
        self._last_done: Optional[float] = None  # when the last collected round ended
        self._collected: Optional[int] = None  # the last round collected
        self._scores: dict[str, tuple[int, float]] = {}  # node -> (round, accuracy) last evaluated
        self._published = 0.0  # when live.json was last written (monotonic)
        self._gcs_address = ""
        self.telemetry: Optional[RunTelemetry] = None  # Ray's metrics endpoint (telemetry.py)
        self._events_sent = 0  # events before this count were exported (or belong to an earlier run)
        self._moved_bytes: dict[int, int] = {}  # round -> bytes of logits its steps sent
        self._shard_size = {leaf: len(shard) for leaf, shard in plan.shards.items()}  # every possible leaf

    # The tree and dead set are the supervisor's, as last applied (before start: the plan's).
    @property
    def tree(self):
        return self.recovery.tree if self.recovery else self._tree

    @property
    def dead(self) -> frozenset[str]:
        return self.recovery.dead if self.recovery else self._dead

    @property
    def left(self) -> frozenset[str]:
        """Elastic devices that left (also in ``dead``: they do not run)."""
        return self.recovery.left if self.recovery else self._left

    @property
    def actors(self) -> dict[str, Any]:
        """node -> the handle of the host actor running it."""
        return self.hosts.actors

    @property
    def placement(self) -> dict[str, dict]:
        """host -> where it runs and what it carries (pid, Ray node, nodes, memory)."""
        return self.hosts.placement

    # ---------------------------------------------------------------- lifecycle

    def connect(self) -> None:
        """Starts or joins Ray (see :func:`connect`); ``start`` does it if not done yet."""
        if not self._connected:
            self._started_ray = connect(self._address, verbose=self._verbose)
            self._connected = True

    def start(self, run_dir: Optional[pathlib.Path] = None, resume: Optional[RunState] = None) -> None:
        """Checks resources, creates the supervisor and every live node's host, and sends the
        bridge samples up the tree. A fresh run has the leaves encode and persists the
        samples to RUN_DIR/bridge/; a resumed run reads them back from there (verified
        against the manifest; no device needs to encode again) and restores every node
        that has a checkpoint."""
        self._run_dir = pathlib.Path(run_dir).resolve() if run_dir else None
        if self._run_dir is not None:
            self._run_dir.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            self._tree, self._dead, self.round_index = resume.tree(self._tree), frozenset(resume.dead), resume.round
            self._left, self.checkpoint = frozenset(resume.left), resume
        self.connect()
        check_cluster(self.plan.config, cluster_nodes(), autoscaling=self._runtime.autoscaling)
        # Tagged with RUN_DIR's name, which a resumed run keeps (a namespace is new each time).
        run_tag = self._run_dir.name if self._run_dir is not None else self.namespace
        self.telemetry, self._events_sent = RunTelemetry(run_tag), len(self.events)
        supervisor = SupervisorActor.options(
            name="supervisor", namespace=self.namespace, scheduling_strategy=on_driver_node(),
        ).remote(self._tree, _policy(self._supervision), self._subtree_sizes(), self._dead, self._left,
                 self.plan.config.tree.elastic, self.round_index, balancing_policy(self.plan.config),
                 self.plan.config.balance.cooldown, self.plan.label_counts, run_tag)
        self.recovery = Recovery(supervisor, self.hosts, self.bridge, self._tree, self._dead,
                                 timeout_s=self._runtime.startup_timeout_s, log=self._event,
                                 restore=self._restore, left=self._left)
        self._gcs_address = ray.get_runtime_context().gcs_address
        if self._run_dir is not None:  # `rayagg scale` and `rayagg status` find the run by this record
            keep_logs(self._run_dir)
            rundir.write_live(self._run_dir, self._gcs_address, self.namespace, os.getpid(),
                              socket.gethostname())
        live = [node for node in self.tree.nodes if node not in self.dead]
        self.hosts.start(live, supervisor)
        if self._run_dir is not None:
            self.hosts.probe_run_dir(self._run_dir)
        stored = self._stored_bridge_samples(resume)
        if stored:
            self._read_bridge_samples(stored, resume)
        else:
            self._encode_leaves(self._run_dir)
        restoring = [self._restore_call(node) for node in live] if resume is not None else []
        await_all([call for call in restoring if call is not None], self._runtime.startup_timeout_s)
        self._sync_bridge_samples()
        self._repair()
        self._collected = self.round_index
        self._publish(now=True)

    def _stored_bridge_samples(self, resume: Optional[RunState]) -> dict[pathlib.Path, str]:
        """The bridge-sample stores a resumed run reads (path -> SHA-256); none for a fresh
        run, or one whose checkpoint lists no store (made with --local): it encodes anew."""
        if resume is None or self._run_dir is None:
            return {}
        return resume.bridge_stores(self._run_dir)

    def _encode_leaves(self, run_dir: Optional[pathlib.Path]) -> None:
        leaves = [n for n in self.tree.nodes if self.tree.is_leaf(n)]
        calls = [self.hosts.call(leaf, "encode") for leaf in leaves]
        self.bridge.encoded({leaf: ref for leaf, _, ref in calls})
        if run_dir is not None:
            samples = await_all(calls, self._runtime.round_timeout_s)
            self._store_bridge_samples(samples, store.store_path(run_dir, self.tree.root))

    def _store_bridge_samples(self, samples: list, path: pathlib.Path) -> None:
        store.write_bridge_samples(samples, path)
        self.bridge_stores.append(path)

    def _read_bridge_samples(self, stores: dict[pathlib.Path, str], resume: RunState) -> None:
        """The durable copies replace the devices: the driver puts (and so owns) each leaf's
        samples again."""
        samples = store.read_bridge_stores(list(stores), sha256=stores,
                                           expected_counts=expected_bridge_counts(resume, self.plan))
        self.bridge_stores = list(stores)
        self.bridge.stored({item.leaf: ray.put(item) for item in samples})

    def close(self) -> None:
        """Kills the hosts and the supervisor, and stops Ray if this runner started it."""
        if self._run_dir is not None:
            rundir.clear_live(self._run_dir)
        if self.telemetry is not None:
            self.telemetry.close()
        self.hosts.close()
        if self.recovery is not None:
            kill(self.recovery.supervisor)
        if self._started_ray:
            ray.shutdown()

    def _subtree_sizes(self) -> dict[str, int]:
        size = self._shard_size
        return {node: sum(size[leaf] for leaf in self._tree.leaves(node)) for node in self._tree.nodes}

    # ---------------------------------------------------------------- rounds

    @property
    def max_rounds_in_flight(self) -> int:
        """How many rounds the loop may submit before collecting the oldest."""
        return self._runtime.rounds_in_flight

    @property
    def rounds_pending(self) -> list[int]:
        """The rounds submitted and not collected yet, oldest first."""
        return [pending.round for pending in self._in_flight]

    @property
    def tree_changing(self) -> bool:
        """The tree may change before the next round (a pending repair, a dead leaf about to
        re-join): the loop drains the rounds in flight before submitting it."""
        rejoining = self._supervision.rejoin_dead_leaves and any(
            self.tree.is_leaf(n) for n in self.dead - self.left)
        return self.recovery.needs_repair or rejoining

    def submit_round(self, round_index: int, checkpoint_dir: Optional[pathlib.Path] = None,
                     attempt: int = 1) -> None:
        """Submits the round's steps (rayagg/schedule.py) and returns at once: every live
        pair, then every live node's evaluation and, with ``checkpoint_dir``, its checkpoint
        written there (RUN_DIR must be shared storage on a cluster). Logits refs feed the
        ``learn`` calls directly. :meth:`collect_round` waits for rounds in order. Dead
        leaves re-join (``rejoin_dead_leaves``) before a round's first attempt."""
        self.round_index = round_index
        if self._supervision.rejoin_dead_leaves and attempt == 1:
            for leaf in sorted(n for n in self.dead - self.left if self.tree.is_leaf(n)):
                self.recovery.rejoin(leaf)
        self._repair()  # every node the tree counts as live runs before calls go out
        live = [node for node in self.tree.nodes if node not in self.dead]
        steps = round_steps(self.tree, self._leaves, self.dead, scored=live, save=checkpoint_dir is not None)
        calls: list[Call] = []
        for step in steps:
            calls.append(self.hosts.call(step.node, step.call, *_arguments(step, calls, checkpoint_dir)))
        submitted = time.perf_counter()
        self._in_flight.append(_InFlight(round_index, steps, calls, checkpoint_dir, submitted, attempt))

    def collect_round(self) -> RoundResult:
        """Waits for the oldest round in flight; returns its scores, checkpoint digests and
        seconds (from the later of its submission and the previous round's end, to its
        end). A round that loses a node is retried once on the repaired tree; pairs that
        had finished train again in the retry. The rounds in flight after it are dropped
        (they were submitted to the tree before the loss; what of them had run on live
        nodes stays done) and the loop submits them again after the retry."""
        oldest = self._in_flight[0]
        settled = self._settle(oldest.calls, context=f"round {oldest.round}", round_index=oldest.round)
        done = time.perf_counter()
        if settled.failed:
            self._retry_oldest(settled)
            return self.collect_round()
        self._in_flight.popleft()
        self._moved_bytes[oldest.round] = logit_bytes(oldest.steps, self._shard_size, self.plan.num_classes)
        seconds = done - max(self._last_done or oldest.submitted, oldest.submitted)
        self._last_done, self._collected = done, oldest.round
        self._repair()
        self._publish(now=True)
        values = lambda call: {node: v for (node, name), v in settled.by_call.items() if name == call}
        return RoundResult(oldest.round, values(EVALUATE),
                           values(SAVE) if oldest.checkpoint_dir is not None else None, seconds)

    def report_round(self, records: list, result: RoundResult) -> None:
        """Exports a collected round's metrics and the events since the last report to Ray's
        metrics endpoint (rayagg/runtime/telemetry.py)."""
        moved = self._moved_bytes.pop(result.round, None)
        self.telemetry.round(records, self.tree.tier_names, moved_bytes=moved)
        self.telemetry.events(self.events[self._events_sent:])
        self._events_sent = len(self.events)

    def _retry_oldest(self, settled: Settled) -> None:
        first, *later = self._in_flight
        for dropped in later:  # let them finish or fail before the tree changes
            self._settle(dropped.calls, context=f"round {dropped.round}", round_index=dropped.round)
        self._repair()
        lost = ", ".join(sorted(settled.died)) or "a node"
        if first.attempt > 1:
            raise RecoveryError(f"round {first.round} lost {lost} again in its retry")
        self._event(EventKind.RETRY, "", f"round {first.round} retried after losing {lost}")
        self._in_flight.clear()
        self.submit_round(first.round, first.checkpoint_dir, attempt=2)

    def _leaves(self, node: str) -> list[str]:
        return training_leaves(self.tree, self.dead, node, self._supervision.keep_dead_leaf_samples, self.left)

    # ---------------------------------------------------------------- balancing

    def rebalance(self, round_index: int, busy_s: dict[str, float]) -> None:
        """Before ``round_index``: the balancing policy moves devices between edges, judged
        by each edge's ``busy_s`` in the round before; each moved subtree's bridge samples
        go to its new parent from the driver's refs and the old parent drops them, as in
        re-parenting. A node that dies during the move is recovered like any other."""
        self._repair()
        self.recovery.rebalance(round_index, busy_s)
        self._repair()

    # ---------------------------------------------------------------- elastic devices

    def plan_membership(self, round_index: int) -> Change:
        """Who joins and leaves before ``round_index`` (rayagg/membership.py): a pending
        ``rayagg scale`` request, the schedule or churn. Empty for a fixed tree."""
        elastic = self.plan.config.tree.elastic
        if elastic is None:
            return Change()
        self._repair()
        request = self.recovery.take_request(round_index, self.plan.config.training.rounds)
        change = membership.plan_change(elastic, self.members(), round_index, request, self._target)
        self._target = change.target
        if change:
            self._event(EventKind.MEMBERSHIP, "", change.describe(len(self.members().active)))
        return change

    def members(self) -> Members:
        return Members.of(self.tree, self.dead, self.plan.shards)

    def change_membership(self, change: Change) -> None:
        """Applies ``change`` at a round boundary: leavers stop (their hosts, if emptied,
        go); joiners are built, encode (new) or restore their checkpoint (returning),
        enter the tree under the parent the balancing policy picks, and their samples
        travel up."""
        if change.leaves:
            self.recovery.change_membership({}, list(change.leaves))
        if change.joins:
            self._join(list(change.joins), change.request)
        self._repair()

    def _join(self, nodes: list[str], request: Optional[membership.Request]) -> None:
        started = time.time()
        returning = {node for node in nodes if node in self.tree.tier_of}
        self.hosts.revive(nodes)
        calls = [self.hosts.call(node, "encode") for node in nodes if node not in returning]
        calls += [call for call in map(self._restore_call, sorted(returning)) if call is not None]
        settled = self._settle(calls, context="joining")
        failed = [node for node in nodes if node in settled.died]
        for node in failed:
            self._event(EventKind.JOIN_FAILED, node, f"{node} died while joining; it stays away")
        self.hosts.retire(failed)
        ready = [node for node in nodes if node not in settled.died]
        encoded = {n: ref for n, _, ref in calls if n in ready and n not in returning}
        self.recovery.change_membership({n: len(self.plan.shards[n]) for n in ready}, [])
        self.bridge.joined(encoded)
        for node in returning & set(ready):
            self.bridge.forget(node)  # built afresh: it holds nothing, not even its own samples
        if encoded and self._run_dir is not None:
            path = store.joined_store_path(self._run_dir, self.round_index + 1)
            self._store_bridge_samples([settled.values[n] for n in encoded], path)
        self._repair()  # the joined samples travel up the tree
        waited = f"; requested {started - request.at:.1f} s before" if request else ""
        self._event(EventKind.MEMBERSHIP, "", f"{len(ready)} device(s) joined in {time.time() - started:.1f} s"
                                              f"{waited}")

    def evaluate(self) -> dict[str, tuple[float, float, float]]:
        """Scores every live node now, outside any round (tests, tools); a node that dies
        meanwhile is left out."""
        return self._call_live("evaluate")

    def bridge_sample_counts(self) -> dict[str, int]:
        return self._call_live("bridge_sample_count")

    def wire_logs(self) -> dict[str, list[dict[str, Any]]]:
        return self._call_live("wire_log")

    def save_checkpoints(self, directory: pathlib.Path) -> dict[str, str]:
        """Each live node's host writes its checkpoint to ``directory`` (RUN_DIR must be shared
        storage on a cluster); returns node -> the file's SHA-256."""
        directory = directory.resolve()
        return self._call_live("save_checkpoint", lambda node: (str(directory / f"{node}.pt"),))

    def _call_live(self, method: str, args=lambda node: ()) -> dict[str, Any]:
        self._repair()
        live = [n for n in self.tree.nodes if n not in self.dead]
        return self._wait([self.hosts.call(n, method, *args(n)) for n in live]).values

    # ---------------------------------------------------------------- bridge samples

    def _sync_bridge_samples(self) -> None:
        """Sends every live node the refs of the leaves it should hold but does not (all of
        them at start, a moved subtree's after re-parenting, everything after a restart)."""
        pending = []
        for node, refs, dropped in self.bridge.moves(self.tree, self.dead, self.left):
            if refs:
                pending.append(self.hosts.call(node, "add_bridge_samples", *refs))
            if dropped:
                pending.append(self.hosts.call(node, "remove_bridge_samples", dropped))
        self._settle(pending)

    # ---------------------------------------------------------------- recovery

    def _wait(self, pending: list[Call], context: str = "") -> Settled:
        """Waits for ``pending`` while supervising, then repairs what the supervisor decided."""
        settled = self._settle(pending, context)
        self._repair()
        return settled

    def _settle(self, pending: list[Call], context: str = "", round_index: Optional[int] = None) -> Settled:
        def seen(node: str, call: str, value: Any) -> None:
            if call == EVALUATE and round_index is not None:
                self._scores[node] = (round_index, value[0])

        def poll() -> None:
            self.recovery.tick()
            self._publish()
        return settle(pending, self._runtime.round_timeout_s, poll_s=self._supervision.heartbeat_interval_s,
                      on_poll=poll, on_death=self._died, context=context, on_value=seen)

    # ---------------------------------------------------------------- the live view

    def _publish(self, now: bool = False) -> None:
        """Rewrites RUN_DIR/live.json with the tree as it is now (rayagg/live.py), at most
        every LIVE_EVERY_S unless ``now``: ``rayagg status`` reads it."""
        if self._run_dir is None or self.recovery is None:
            return
        if not now and time.monotonic() - self._published < LIVE_EVERY_S:
            return
        self._published = time.monotonic()
        try:
            ages = ray.get(self.recovery.supervisor.heartbeat_ages.remote(), timeout=LIVE_EVERY_S)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            ages = {}  # the view goes out without heartbeat ages rather than hold up the round
        shard = self._shard_size
        views = live.node_views(
            self.tree, self.plan.tree, self.dead, self.left, self.hosts.home,
            {host: where.get("ip", "") for host, where in self.placement.items()},
            {node: sum(shard[leaf] for leaf in self._leaves(node)) for node in self.tree.nodes},
            self._scores, ages)
        done = self._collected or 0
        record = live.to_record(views, rounds=self.plan.config.training.rounds, done=done,
                                in_flight=self.rounds_pending, updated=time.time())
        rundir.write_live(self._run_dir, self._gcs_address, self.namespace, os.getpid(), socket.gethostname(),
                          view=record)

    def _repair(self) -> None:
        if self.recovery.needs_repair:
            self.recovery.repair(self._sync_bridge_samples)

    def _died(self, death: Death) -> set[str]:
        """A call showed a death: a host actor (all its nodes) or one stopped node. Reported
        to the supervisor at once; returns the nodes."""
        nodes = {death.node} if death.actor_id is None else self.hosts.nodes_of_actor(death.actor_id)
        self.recovery.report(nodes - self.dead)
        return nodes

    def _restore(self, node: str) -> None:
        """Restores ``node`` from the last complete checkpoint (verified by its SHA-256)."""
        call = self._restore_call(node)
        if call is None:
            self._event(EventKind.RESTART_FRESH, node, f"{node} has no checkpoint yet: it starts from scratch")
        else:
            await_all([call], self._runtime.startup_timeout_s)

    def _restore_call(self, node: str) -> Optional[Call]:
        located = self.checkpoint.located(node, self._run_dir) if self.checkpoint and self._run_dir else None
        if located is None:
            return None
        path, digest = located
        return self.hosts.call(node, "load_checkpoint", str(path), digest)

    def _event(self, kind: EventKind, node: str, detail: str) -> None:
        """Records an event of the round being waited for (the oldest in flight)."""
        round_index = self._in_flight[0].round if self._in_flight else self.round_index
        self.events.append(Event.now(round_index, kind, node, detail))


@dataclass
class _InFlight:
    """A submitted round: its steps and their calls (same order), where it saves, when
    it was submitted and which attempt it is."""

    round: int
    steps: list[Step]
    calls: list[Call]
    checkpoint_dir: Optional[pathlib.Path]
    submitted: float
    attempt: int


def _arguments(step: Step, calls: list[Call], checkpoint_dir: Optional[pathlib.Path]) -> tuple:
    """A step's arguments after its node: a learn gets its teacher's logits ref."""
    if step.call == LOGITS:
        return (list(step.leaves),)
    if step.call == LEARN:
        return list(step.leaves), calls[step.teacher][2]
    if step.call == SAVE:
        return (str(checkpoint_dir.resolve() / f"{step.node}.pt"),)
    return ()


def _policy(config) -> Policy:
    return Policy(heartbeat_interval_s=config.heartbeat_interval_s, max_missed=config.max_missed,
                  restart_root=config.restart_root, replace_dead=config.replace_dead,
                  max_restarts=config.max_restarts)
