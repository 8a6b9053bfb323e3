"""RayRunner: the tree on Ray host actors, driven and supervised from the driver process.

Its own job is the round graph and recovery's wiring; start-up is
rayagg/runtime/startup.py, elastic devices rayagg/runtime/elastic.py, the live view
rayagg/runtime/live_view.py and the Prometheus metrics rayagg/runtime/telemetry.py (both
observers of the run). The design, from the Ray facts in docs/ray.md:

* The driver creates every host actor (rayagg/runtime/hosts.py: one node per actor by
  default, ``nodes_per_actor`` packs more) and the supervisor, so no actor's death
  takes another with it.
* The driver calls ``encode`` on the leaves and so owns every bridge sample's object
  ref; parents receive the refs of their subtree as arguments. When an edge dies, its
  orphans' samples are re-sent to their new parent from those refs
  (rayagg/runtime/bridge.py): nothing is asked of the dead node, no sample is lost.
* A round is submitted as one graph of calls (rayagg/core/schedule.py): logits refs feed
  ``learn`` calls directly, and every node's evaluation (and checkpoint, when due)
  follows its round's work. A host gets one call per batch of steps that can start
  together (rayagg/runtime/batching.py), not one per step. Ray runs one caller's calls to
  a host in submission order, so every node does the same work in the same order as the
  sequential driver, while independent hosts run at the same time. No barrier between rounds: up to
  ``runtime.rounds_in_flight`` rounds are submitted before the oldest is collected, so
  an edge trains its next round with its devices while the cloud still works with
  other edges; the loop drains them before anything changes the tree.
* Waits poll the supervisor every heartbeat interval; its decisions are applied by
  rayagg/runtime/recovery.py (deaths at once, restarts and sample moves after the
  wait). A round that loses a node is retried once on the repaired tree, with the
  rounds in flight after it; pairs that had finished before the failure train again.
* Every wait has a deadline; Ray's exceptions become the project's errors naming the
  node and the call (rayagg/runtime/waiting.py).
"""
from __future__ import annotations

import datetime
import os
import pathlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import ray

from rayagg.core.events import Event, EventKind
from rayagg.core.membership import Change
from rayagg.core import wire
from rayagg.core.schedule import EVALUATE, SAVE, RoundResult, Step, batch_steps
from rayagg.core.tree import Tree, training_leaves
from rayagg.errors import RecoveryError
from rayagg.learning.data import Dataset
from rayagg.learning.plan import Plan, payloads
from rayagg.methods import method_for
from rayagg.observe import Observers
from rayagg.rundir import store
from rayagg.rundir.manifest import RunState, checkpoint_file
from rayagg.runtime import startup
from rayagg.runtime.bridge import BridgeRoutes
from rayagg.runtime.cluster import connect
from rayagg.runtime.elastic import ElasticDevices
from rayagg.runtime.faults import FaultHook, no_faults
from rayagg.runtime.host import HostReport
from rayagg.runtime.hosts import HostPool
from rayagg.runtime.recovery import Recovery
from rayagg.runtime.waiting import Call, Death, Settled, kill, settle
from rayagg.storage import as_path


class RayRunner:
    """Runs ``plan``'s tree on Ray; see the module docstring for the design. ``faults`` is
    the fault-injection hook (rayagg/runtime/faults.py); tests and chaos runs only.
    ``dataset``, the data set the plan was made from, saves loading it again to ship the
    hosts their data (``data.source: driver``); it is dropped once shipped."""

    def __init__(self, plan: Plan, *, address: Optional[str] = None, namespace: Optional[str] = None,
                 verbose: bool = False, faults: FaultHook = no_faults, dataset: Optional[Dataset] = None):
        self.plan = plan
        self.method = method_for(plan.config.method)
        self._payloads = payloads(plan)
        self.round_index = 0
        self.observers = Observers()  # the run's, from start on (rayagg/observe.py)
        self.run_dir: Optional[pathlib.Path] = None
        self._address = address
        self._verbose = verbose  # Ray's own output on this terminal (ray_logs.py)
        self._runtime, self._supervision = plan.config.runtime, plan.config.supervision
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.namespace = namespace or f"rayagg-{plan.config.name}-{stamp}-{os.getpid()}"
        self.hosts = HostPool(plan, self.namespace, heartbeat_interval_s=self._supervision.heartbeat_interval_s,
                              timeout_s=self._runtime.startup_timeout_s, faults=faults, dataset=dataset)
        self.bridge = BridgeRoutes(self._supervision.keep_dead_leaf_samples,
                                   carried=self.method.carries_bridge_samples)
        self._received: dict[str, list[str]] = {}  # node -> leaves whose samples reached it since the last round
        self.elastic = ElasticDevices(self)
        self.recovery: Optional[Recovery] = None
        self.checkpoint: Optional[RunState] = None  # the last complete cut: restores read it
        self.bridge_stores: list[pathlib.Path] = []  # durable copies of every bridge sample
        self._before_start = (plan.tree, frozenset(), frozenset())  # tree, dead, left until start
        self._started_ray = False
        self._connected = False
        self._in_flight: deque[_InFlight] = deque()  # submitted, not yet collected, oldest first
        self._last_done: Optional[float] = None  # when the last collected round ended
        self._saved: Optional[_Saved] = None  # the checkpoints of the last collected round that saved

    # The tree, dead set and leavers are the supervisor's, as last applied.
    @property
    def tree(self) -> Tree:
        return self.recovery.tree if self.recovery else self._before_start[0]

    @property
    def dead(self) -> frozenset[str]:
        return self.recovery.dead if self.recovery else self._before_start[1]

    @property
    def left(self) -> frozenset[str]:
        """Elastic devices that left (also in ``dead``: they do not run)."""
        return self.recovery.left if self.recovery else self._before_start[2]

    @property
    def live_nodes(self) -> list[str]:
        return [node for node in self.tree.nodes if node not in self.dead]

    @property
    def actors(self) -> dict[str, Any]:
        """node -> the handle of the host actor running it."""
        return self.hosts.actors

    @property
    def placement(self) -> dict[str, HostReport]:
        """host -> where it runs and what it carries."""
        return self.hosts.placement

    # ---------------------------------------------------------------- lifecycle

    def connect(self) -> None:
        """Starts or joins Ray (see :func:`connect`); ``start`` does it if not done yet."""
        if not self._connected:
            self._started_ray = connect(self._address, verbose=self._verbose)
            self._connected = True

    def start(self, run_dir: Optional[pathlib.Path] = None, resume: Optional[RunState] = None,
              observers: Optional[Observers] = None) -> None:
        """Checks resources, creates the supervisor and every live node's host, and sends the
        bridge samples up the tree (rayagg/runtime/startup.py). A fresh run has the leaves
        encode and persists the samples to RUN_DIR/bridge/; a resumed run reads them back
        from there and restores every node that has a checkpoint. From here on the run's
        ``observers`` hear what happens, this runtime's own among them."""
        self.observers = observers if observers is not None else Observers()
        self.run_dir = as_path(run_dir).resolve() if run_dir else None  # a path, or a URI (rayagg/storage.py)
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # a runner may be started without the loop
        if resume is not None:
            self._before_start = (resume.tree(self.plan.tree), frozenset(resume.dead), frozenset(resume.left))
            self.round_index, self.checkpoint = resume.round, resume
        self.connect()
        startup.check_resources(self.plan.config)
        self.recovery = Recovery(startup.create_supervisor(self), self.hosts, self.bridge, *self._before_start,
                                 timeout_s=self._runtime.startup_timeout_s, log=self.record_event,
                                 restore=self.restore)
        self.observers.add(*startup.runtime_observers(self))
        live = self.live_nodes
        self.hosts.start(live, self.recovery.supervisor)
        if self.run_dir is not None:
            self.hosts.probe_run_dir(self.run_dir)
        startup.place_bridge_samples(self, resume)
        if resume is not None:
            startup.restore_nodes(self, live)
        self.sync_bridge_samples()
        self.repair()
        if resume is not None:
            self._received = {}  # reloaded from the run's store: no new traffic of the tree's

    def close(self) -> None:
        """Kills the hosts and the supervisor, withdraws the run's request for machines, and
        stops Ray if this runner started it."""
        self.hosts.close()
        if self.recovery is not None:
            kill(self.recovery.supervisor)
            self.elastic.release()
        if self._started_ray:
            ray.shutdown()

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
        return self.recovery.needs_repair or bool(self._rejoining())

    def submit_round(self, round_index: int, checkpoint_dir: Optional[pathlib.Path] = None,
                     attempt: int = 1) -> None:
        """Submits the round's steps (rayagg/core/schedule.py) and returns at once: every live
        pair, then every live node's evaluation and, with ``checkpoint_dir``, its checkpoint
        written there (RUN_DIR must be shared storage on a cluster). Logits refs feed the
        ``learn`` calls directly. :meth:`collect_round` waits for rounds in order. Dead
        leaves re-join (``rejoin_dead_leaves``) before a round's first attempt."""
        self.round_index = round_index
        if attempt == 1:
            for leaf in self._rejoining():
                self.recovery.rejoin(leaf)
        self.repair()  # every node the tree counts as live runs before calls go out
        steps = self.method.round_steps(self.tree, self.leaves_of, self.dead, self.live_nodes,
                                        save=checkpoint_dir is not None)
        submitted: dict[int, Call] = {}  # step index -> its call, batch by batch
        for batch in batch_steps(steps, self.hosts.home.__getitem__):
            requests = [(steps[i].node, steps[i].call, _arguments(steps[i], submitted, checkpoint_dir))
                        for i in batch.steps]
            submitted.update(zip(batch.steps, self.hosts.call_batch(requests)))
        calls = [submitted[index] for index in range(len(steps))]
        moved = wire.merge(wire.step_bytes(steps, self.tree.parent_of, self._payloads.answer_bytes),
                           self._bridge_sent())
        self._in_flight.append(_InFlight(round_index, steps, calls, checkpoint_dir, time.perf_counter(), attempt,
                                         moved))
        self.observers.round_submitted(round_index, steps, attempt)

    def collect_round(self) -> RoundResult:
        """Waits for the oldest round in flight; returns its scores, checkpoint digests and
        seconds (from the later of its submission and the previous round's end, to its
        end). A round that loses a node is retried on the repaired tree (up to
        ``supervision.round_retries`` times); pairs that
        had finished train again in the retry. The rounds in flight after it are dropped
        (they were submitted to the tree before the loss; what of them had run on live
        nodes stays done) and the loop submits them again after the retry."""
        oldest = self._in_flight[0]
        settled = self.settle(oldest.calls, context=f"round {oldest.round}", round_index=oldest.round)
        done = time.perf_counter()
        if settled.failed:
            self._retry_oldest(settled)
            return self.collect_round()
        self._in_flight.popleft()
        seconds = done - max(self._last_done or oldest.submitted, oldest.submitted)
        self._last_done = done
        values = lambda call: {node: v for (node, name), v in settled.by_call.items() if name == call}
        if oldest.checkpoint_dir is not None:
            self._saved = _Saved(oldest.round, oldest.checkpoint_dir.resolve(), values(SAVE))
        self.repair()
        return RoundResult(oldest.round, values(EVALUATE),
                           values(SAVE) if oldest.checkpoint_dir is not None else None, seconds, oldest.wire)

    def _retry_oldest(self, settled: Settled) -> None:
        """Lets the later rounds in flight finish or fail, repairs the tree, waits until every
        live node has been heard from since the failure or declared dead, and submits the
        oldest round again; the later ones are dropped (the loop submits them again)."""
        seen = time.monotonic()
        first, *later = self._in_flight
        for dropped in later:  # let them finish or fail before the tree changes
            self.settle(dropped.calls, context=f"round {dropped.round}", round_index=dropped.round)
        self.repair()
        lost = ", ".join(sorted(settled.died)) or "a node"
        if first.attempt > self._supervision.round_retries:
            raise RecoveryError(f"round {first.round} lost {lost} again in its retry"
                                + (f" ({first.attempt - 1} retries)" if first.attempt > 2 else ""))
        unheard = self.recovery.await_verdicts(seen, self._supervision)  # a machine's other hosts are declared first
        self.repair()
        unheard_note = f"; not heard from since: {', '.join(sorted(unheard))}" if unheard else ""
        self.record_event(EventKind.RETRY, "", f"round {first.round} retried after losing {lost}{unheard_note}")
        self._in_flight.clear()
        self.submit_round(first.round, first.checkpoint_dir, attempt=first.attempt + 1)

    def leaves_of(self, node: str) -> list[str]:
        """The leaves whose bridge samples ``node`` trains on now."""
        return training_leaves(self.tree, self.dead, node, self._supervision.keep_dead_leaf_samples, self.left)

    def _rejoining(self) -> list[str]:
        """Dead leaves that re-join before the next round (``rejoin_dead_leaves``)."""
        if not self._supervision.rejoin_dead_leaves:
            return []
        return sorted(n for n in self.dead - self.left if self.tree.is_leaf(n))

    # ---------------------------------------------------------------- tree changes between rounds

    def rebalance(self, round_index: int, busy_s: dict[str, float]) -> None:
        """Before ``round_index``: the balancing policy moves devices between edges, judged
        by each edge's ``busy_s`` in the round before; each moved subtree's bridge samples
        go to its new parent from the driver's refs and the old parent drops them, as in
        re-parenting. A node that dies during the move is recovered like any other."""
        self.repair()
        self.recovery.rebalance(round_index, busy_s)
        self.repair()

    def plan_membership(self, round_index: int) -> Change:
        """Who joins and leaves before ``round_index`` (rayagg/runtime/elastic.py)."""
        return self.elastic.plan(round_index)

    def change_membership(self, change: Change) -> None:
        """Applies ``change`` at a round boundary (rayagg/runtime/elastic.py)."""
        self.elastic.apply(change)

    def save_checkpoints(self, directory: pathlib.Path) -> dict[str, str]:
        """Each live node's host writes its checkpoint to ``directory`` (RUN_DIR must be shared
        storage on a cluster); returns node -> the file's SHA-256."""
        directory = directory.resolve()
        return self.call_live("save_checkpoint", lambda node: (str(checkpoint_file(directory, node)),))

    def call_live(self, method: str, args: Callable[[str], tuple] = lambda node: ()) -> dict[str, Any]:
        """``method`` of every live node, supervised and repaired after (a node that dies
        meanwhile is left out); node -> its answer."""
        self.repair()
        settled = self.settle([self.hosts.call(n, method, *args(n)) for n in self.live_nodes])
        self.repair()
        return settled.values

    # ---------------------------------------------------------------- bridge samples

    def sync_bridge_samples(self) -> None:
        """Sends every live node the refs of the leaves it should hold but does not (all of
        them at start, a moved subtree's after re-parenting, everything after a restart)."""
        pending = []
        for node, added, dropped in self.bridge.moves(self.tree, self.dead, self.left):
            if added:
                pending.append(self.hosts.call(node, "add_bridge_samples", *(self.bridge.refs[l] for l in added)))
                self._received.setdefault(node, []).extend(added)
            if dropped:
                pending.append(self.hosts.call(node, "remove_bridge_samples", dropped))
        self.settle(pending)

    def _bridge_sent(self) -> dict[str, wire.Link]:
        """The bridge samples sent up the tree since the last round was submitted, link by
        link (rayagg/core/wire.py): all of them before the first round, then what
        re-parenting, rebalancing and joins moved."""
        per_sample = wire.bridge_sample_bytes(self.plan.image_shape)
        sent = wire.bridge_bytes(self._received, self.tree.parent_of,
                                 lambda leaf: per_sample * self.plan.shard_sizes[leaf])
        self._received = {}
        return sent

    def store_bridge_samples(self, samples: list, path: pathlib.Path) -> None:
        """Writes a durable copy of ``samples`` to ``path`` (listed in every later cut)."""
        store.write_bridge_samples(samples, path)
        self.bridge_stores.append(path)

    # ---------------------------------------------------------------- recovery's wiring

    def settle(self, pending: list[Call], context: str = "", round_index: Optional[int] = None,
               timeout_s: Optional[float] = None) -> Settled:
        """Waits for ``pending`` (up to ``timeout_s``, by default the round timeout) while
        supervising (rayagg/runtime/waiting.py): the supervisor decides every heartbeat
        interval, deaths are reported at once, and the observers hear each round step's
        value and every poll."""
        def seen(node: str, call: str, value: Any) -> None:
            if round_index is not None:
                self.observers.step_finished(round_index, node, call, value)

        def poll() -> None:
            self.recovery.tick()
            self.observers.waiting()
        return settle(pending, timeout_s or self._runtime.round_timeout_s, poll_s=self._supervision.heartbeat_interval_s,
                      on_poll=poll, on_death=self._died, context=context, on_value=seen)

    def repair(self) -> None:
        """Brings back what the supervisor restarted and moves bridge samples (recovery.py)."""
        if self.recovery.needs_repair:
            self.recovery.repair(self.sync_bridge_samples)

    def _died(self, death: Death) -> set[str]:
        """A call showed a death: a host actor (all its nodes) or one stopped node. Reported
        to the supervisor at once; returns the nodes."""
        nodes = {death.node} if death.actor_id is None else self.hosts.nodes_of_actor(death.actor_id)
        self.recovery.report(nodes - self.dead)
        return nodes

    def restore(self, node: str) -> None:
        """Restores ``node`` from its last checkpoint (verified by its SHA-256), supervised:
        a death meanwhile is reported and recovered like any other."""
        call = self.restore_call(node)
        if call is None:
            self.record_event(EventKind.RESTART_FRESH, node, f"{node} has no checkpoint yet: it starts from scratch")
        else:
            self.settle([call], context=f"restoring {node}", timeout_s=self._runtime.startup_timeout_s)

    def restore_call(self, node: str) -> Optional[Call]:
        """Submits ``node``'s restore from its last checkpoint; None when it has none."""
        located = self.restore_point(node)
        if located is None:
            return None
        path, digest = located
        return self.hosts.call(node, "load_checkpoint", str(path), digest)

    def restore_point(self, node: str) -> Optional[tuple[pathlib.Path, str]]:
        """(path, SHA-256) of ``node``'s last checkpoint: the one the last collected round
        wrote, until the loop has cut that round (a node that saved its round and died
        before the cut comes back with that round's state, the file the cut will name),
        then the last cut's; None when it has none."""
        saved, cut = self._saved, self.checkpoint
        if saved is not None and node in saved.digests and (cut is None or cut.round < saved.round):
            return checkpoint_file(saved.directory, node), saved.digests[node]
        return cut.located(node, self.run_dir) if cut and self.run_dir else None

    def record_event(self, kind: EventKind, node: str, detail: str) -> None:
        """Tells the observers of an event of the round being waited for (the oldest in flight)."""
        round_index = self._in_flight[0].round if self._in_flight else self.round_index
        self.observers.event(Event.now(round_index, kind, node, detail))


@dataclass
class _InFlight:
    """A submitted round: its steps and their calls (same order), where it saves, when
    it was submitted, which attempt it is, and the bytes it moves over each link."""

    round: int
    steps: list[Step]
    calls: list[Call]
    checkpoint_dir: Optional[pathlib.Path]
    submitted: float
    attempt: int
    wire: dict[str, wire.Link]


@dataclass(frozen=True)
class _Saved:
    """The checkpoints a collected round's own steps wrote: ``round``, the directory
    they are in, and node -> SHA-256."""

    round: int
    directory: pathlib.Path
    digests: dict[str, str]


def _arguments(step: Step, calls: Mapping[int, Call], checkpoint_dir: Optional[pathlib.Path]) -> tuple:
    """A step's arguments after its node: its leaves (if any), then the refs of the answers
    it takes (a learn its teacher's logits, an average its children's weights)."""
    if step.call == SAVE:
        return (str(checkpoint_file(checkpoint_dir.resolve(), step.node)),)
    leaves = (list(step.leaves),) if step.leaves else ()
    return (*leaves, *(calls[index].ref for index in step.inputs))
