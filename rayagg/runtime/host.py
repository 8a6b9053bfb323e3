"""The host actor: a thin Ray shell around one or more :class:`~rayagg.learning.node.NodeState`.

A host carries the nodes its tier's packing gives it (rayagg/core/packing.py). Every call
names the node it is for; Ray runs one host's calls in submission order, so each node
does the same work in the same order as in the in-process driver, while hosts run in
parallel. The nodes of a host share what never changes: one torch, one frozen
autoencoder, one test split. Each keeps its own model, optimizer, seed, local data,
bridge samples and checkpoint.

A host keeps only its leaves' shards and the test split. Under ``data.source: driver``
the driver ships them at creation (uint8, through Ray's object store: the one time raw
images cross an actor boundary); under ``local`` the host loads them from its machine's
disk. What crosses afterwards (bridge samples and logits) is recorded per node in a wire
log the tests read.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import ray
import torch

from rayagg.core import packing
from rayagg.core.beats import Stamp
from rayagg.core.schedule import CallTrace, Scores
from rayagg.errors import DataError, NodeStoppedError
from rayagg.learning.averaging import Weights
from rayagg.learning.node import BridgeSamples, LocalData, NodeState
from rayagg.learning.plan import (Plan, RawImages, build_node, evaluation_split, frozen_autoencoder, load_data,
                                  local_data)
from rayagg.nodes import describe_nodes
from rayagg.rundir import checkpoint
from rayagg.rundir.directory import probe_run_dir
from rayagg.runtime import batching, memory
from rayagg.storage import as_path


@dataclass(frozen=True)
class HostReport:
    """Where a host runs, with what and for whom (its ``ready`` answer): the runner's
    placement record, the live view's machine column, the bench's peak memory."""

    host: str
    nodes: list[str]
    pid: int
    ip: str
    ray_node_id: str
    torch_threads: int
    device: str
    cuda_visible_devices: Optional[str]
    rss_mb: float
    peak_rss_mb: float


def torch_threads(num_cpus: float) -> int:
    """Torch's intra-op threads for a host granted ``num_cpus`` in all (at least one)."""
    return max(1, int(num_cpus))


# The supervisor's probes (and the test hooks) run in their own concurrency group: a thread
# of their own, so a host answers while its one main slot is busy with a long training step.
CONTROL = "control"


@ray.remote(concurrency_groups={CONTROL: 1})
class NodeHost:
    """Carries tree nodes of one tier. Created by the driver only, so a parent's death
    never takes its children with it (actors made inside an actor die with their creator).

    ``nodes`` are the nodes to build at once; the host can later ``add_node`` any node
    its layout gives it (a restart or re-join), and keeps those nodes' data for it.
    ``test`` and ``shards`` (leaf -> its shard, for every leaf of the layout) are the
    driver's under ``data.source: driver``, None under ``local``.
    """

    def __init__(self, plan: Plan, name: str, nodes: list[str], test: Optional[RawImages] = None,
                 shards: Optional[dict[str, RawImages]] = None):
        self._name = name
        self._plan = plan
        self._nodes: dict[str, NodeState] = {}
        self._stopped: set[str] = set()
        self._wire: dict[str, Counter[tuple]] = {}
        self._trace: Optional[dict[str, list[CallTrace]]] = None  # see start_trace
        self._beating = threading.Event()  # cleared: heartbeats paused (a test hook)
        self._beating.set()
        self._hung = threading.Event()  # set: the host hangs (a test hook)
        # A constructor that raises leaves the driver only "ActorDiedError", the cause
        # buried in the actor's log; kept here, ``ready`` raises it where the driver sees it.
        self._start_error: Optional[BaseException] = None
        try:
            self._build(plan, nodes, test, shards)
        except Exception as exc:
            self._start_error = exc

    def _build(self, plan: Plan, nodes: list[str], test: Optional[RawImages],
               shards: Optional[dict[str, RawImages]]) -> None:
        layout = next(h for h in packing.pack(plan.config) if h.name == self._name)
        resources = plan.tier(layout.nodes[0]).resources
        if resources.num_gpus == 0:
            # Ray leaves CUDA_VISIBLE_DEVICES unset for CPU-only actors, which would let
            # them see every GPU of the machine; hide them before CUDA initialises.
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        torch.set_num_threads(resources.torch_threads or torch_threads(resources.num_cpus * len(layout.nodes)))
        use_cuda = resources.num_gpus > 0 and torch.cuda.is_available()
        self._device = torch.device("cuda" if use_cuda else "cpu")
        leaves = [node for node in layout.nodes if plan.is_leaf(node)]
        self._test, self._local = self._data(plan, leaves, test, shards)
        self._frozen = frozen_autoencoder(plan)
        for node in nodes:
            self.add_node(node)

    def _data(self, plan: Plan, leaves: list[str], test: Optional[RawImages],
              shards: Optional[dict[str, RawImages]]) -> tuple[tuple[torch.Tensor, ...], dict[str, LocalData]]:
        """(the test split as floats, leaf -> its LocalData) for ``leaves``: converted from what
        the driver shipped, or read from this machine's copy under ``data.source: local``.
        Raises DataError when the data set is missing here, or the driver shipped nothing."""
        if plan.config.data.source == "local":
            dataset = load_data(plan.config)
            # Lean: keep the test split and this host's leaves' shards; the rest of the
            # data set is freed when ``dataset`` goes out of scope.
            return evaluation_split(plan, dataset), {leaf: local_data(plan, leaf, dataset) for leaf in leaves}
        if test is None or shards is None:
            raise DataError(f"host {self._name} was given no data (data.source: driver ships it at creation)")
        return test.floats(), {leaf: shards[leaf].local() for leaf in leaves}

    # ------------------------------------------------------------ membership

    def add_node(self, node: str) -> str:
        """Builds ``node`` afresh on this host (at start, or to restart it); returns its name."""
        self._nodes[node] = build_node(self._plan, node, self._local.get(node), frozen=self._frozen,
                                       device=self._device)
        self._stopped.discard(node)
        self._wire.setdefault(node, Counter())
        return node

    def remove_node(self, node: str) -> None:
        """Forgets ``node`` (declared dead); the other nodes carry on."""
        self._nodes.pop(node, None)
        self._stopped.discard(node)

    def stop_node(self, node: str) -> None:
        """``node`` leaves as if its process had died: its heartbeats stop and calls to it
        raise NodeStoppedError. The other nodes of this host are untouched."""
        self._state(node)
        self._stopped.add(node)

    def nodes(self) -> list[str]:
        """The nodes this host runs now (stopped ones excluded)."""
        # Snapshots first: the heartbeat thread calls this while a call may add or remove a
        # node, and iterating a dict that changes size raises. list() and set() copy in
        # one step under the GIL.
        carried, stopped = list(self._nodes), set(self._stopped)
        return [node for node in carried if node not in stopped]

    def start_heartbeats(self, supervisor: Any, interval_s: float) -> None:
        """Sends ``supervisor.heartbeat(nodes)`` for the nodes it runs every ``interval_s``
        from a daemon thread.

        A thread, because a training step holds this actor's only task slot for
        seconds; torch releases the GIL in its kernels, so the thread still runs.
        """
        # The first beat is synchronous: the supervisor then counts silence from now,
        # not from before this actor (maybe a restart) was created. It also hands over
        # this host's handle, which the supervisor probes when the host falls silent.
        me = ray.get_runtime_context().current_actor
        ray.get(supervisor.heartbeat.remote(self.nodes(), Stamp(self._name, 0, time.monotonic()), me), timeout=60)

        def beat() -> None:
            seq = 0
            while not self._hung.is_set():  # a daemon thread: it ends with the actor's process
                time.sleep(interval_s)
                if not self._beating.is_set():
                    continue
                seq += 1  # stamped with this host's clock: a late send shows as a gap in it
                try:
                    supervisor.heartbeat.remote(self.nodes(), Stamp(self._name, seq, time.monotonic()))
                except Exception as exc:  # keep beating: one failed send must not silence the host
                    print(f"{self._name}: heartbeat not sent: {exc!r}", file=sys.stderr, flush=True)

        threading.Thread(target=beat, name=f"heartbeat-{self._name}", daemon=True).start()

    @ray.method(concurrency_group=CONTROL)
    def probe(self, nodes: list[str]) -> list[str]:
        """The supervisor asks whether a silent host lives: answers which of ``nodes`` it
        runs now (stopped ones excluded). Runs beside a busy main slot (its own group)."""
        self._hang_if_hung()
        carried = set(self.nodes())
        return [node for node in nodes if node in carried]

    @ray.method(concurrency_group=CONTROL)
    def pause_heartbeats(self, paused: bool = True) -> None:
        """A test hook: stops (or resumes) sending heartbeats; calls and probes still answer."""
        (self._beating.clear if paused else self._beating.set)()

    @ray.method(concurrency_group=CONTROL)
    def hang(self) -> None:
        """A test hook: the host hangs as a deadlocked process would: no more heartbeats,
        and every later call (probes included) and the protocol call now running, at its
        next node, never return. Only killing the actor ends it."""
        self._hung.set()

    def _hang_if_hung(self) -> None:
        if self._hung.is_set():
            threading.Event().wait()  # forever

    def ready(self) -> HostReport:
        """Where this host runs, with what and for whom. Raises the constructor's exception
        if building failed."""
        if self._start_error is not None:
            raise self._start_error
        return HostReport(self._name, list(self._nodes), os.getpid(), ray.util.get_node_ip_address(),
                          ray.get_runtime_context().get_node_id(), torch.get_num_threads(), str(self._device),
                          os.environ.get("CUDA_VISIBLE_DEVICES"), memory.rss_mb(), memory.peak_rss_mb())

    def held_bytes(self) -> dict[str, int]:
        """What this host's nodes' tensors hold in all, by purpose (``NodeState.held_bytes``)."""
        total: Counter[str] = Counter()
        for state in self._nodes.values():
            total.update(state.held_bytes())
        return dict(total)

    def probe_run_dir(self, run_dir: str, token: str) -> Optional[str]:
        """None when RUN_DIR is usable from this host's machine, else why not (see
        ``rundir.probe_run_dir``)."""
        return probe_run_dir(run_dir, token, f"{self._name} on {socket.gethostname()}")

    # ------------------------------------------------------------ the protocol

    def run_batch(self, items: list[batching.Item], *inputs: Any) -> Any:
        """Runs several steps, each ``method(node, *args)`` of this actor, in order (one
        Ray call for a batch of rayagg/core/schedule.py); answers one value per step, a
        :class:`~rayagg.runtime.batching.Failed` where a step failed (rayagg/runtime/
        batching.py). Called with ``num_returns=len(items)``: one item's answer is itself."""
        answers = batching.run(items, inputs, lambda node, call, *args: getattr(self, call)(node, *args))
        memory.return_free_memory()
        return answers[0] if len(answers) == 1 else answers

    def encode(self, node: str) -> BridgeSamples:
        """A leaf encodes its local data once, keeps its own bridge samples and returns them."""
        state = self._state(node)
        samples = state.encode()
        state.add_bridge_samples(samples)
        self._record(node, "sent", "bridge_samples", samples.codes.shape, samples.labels.shape)
        return samples

    def add_bridge_samples(self, node: str, *samples: BridgeSamples) -> int:
        """``node`` keeps the bridge samples of leaves below; returns how many it now holds."""
        state = self._state(node)
        for item in samples:
            self._record(node, "received", "bridge_samples", item.codes.shape, item.labels.shape)
            state.add_bridge_samples(item)
        return state.bridge_sample_count

    def remove_bridge_samples(self, node: str, leaves: list[str]) -> int:
        state = self._state(node)
        for leaf in leaves:
            state.remove_bridge_samples(leaf)
        return state.bridge_sample_count

    def logits(self, node: str, leaves: list[str]) -> np.ndarray:
        started, state = _clocks(), self._state(node)
        work = state.work_s
        out = state.logits(leaves).numpy()
        self._record(node, "sent", "logits", out.shape)
        self._traced(node, "logits", started, state.work_s - work)
        return out

    def learn(self, node: str, leaves: list[str], teacher: np.ndarray) -> float:
        started, state = _clocks(), self._state(node)
        work = state.work_s
        self._record(node, "received", "logits", teacher.shape)
        loss = state.learn(leaves, torch.from_numpy(np.array(teacher)))
        self._traced(node, "learn", started, state.work_s - work)
        return loss

    def evaluate(self, node: str) -> Scores:
        """Test accuracy and loss, and the seconds of training work since the last call."""
        started, state = _clocks(), self._state(node)
        accuracy, loss = state.evaluate(*self._test)
        self._traced(node, "evaluate", started, time.perf_counter() - started[0])
        return Scores(accuracy, loss, state.take_work_s())

    # The weight-averaging methods' calls (rayagg/methods/hierfavg.py, local.py).

    def train_local(self, node: str) -> float:
        started, state = _clocks(), self._state(node)
        work = state.work_s
        loss = state.train_local()
        self._traced(node, "train_local", started, state.work_s - work)
        return loss

    def share_weights(self, node: str) -> Weights:
        started = _clocks()
        weights = self._state(node).share_weights()
        self._record(node, "sent", "weights", (0, weights.nbytes))
        self._traced(node, "share_weights", started, 0.0)
        return weights

    def average_weights(self, node: str, *children: Weights) -> int:
        started, state = _clocks(), self._state(node)
        work = state.work_s
        for weights in children:
            self._record(node, "received", "weights", (0, weights.nbytes))
        samples = state.average_weights(*children)
        self._traced(node, "average_weights", started, state.work_s - work)
        return samples

    def adopt_weights(self, node: str, weights: Weights) -> int:
        started = _clocks()
        self._record(node, "received", "weights", (0, weights.nbytes))
        samples = self._state(node).adopt_weights(weights)
        self._traced(node, "adopt_weights", started, 0.0)
        return samples

    def bridge_sample_count(self, node: str) -> int:
        return self._state(node).bridge_sample_count

    def save_checkpoint(self, node: str, path: str) -> str:
        """Writes ``node``'s model, optimizer and shuffling state to ``path`` on this host's
        machine, or straight to the object store when ``path`` is a URI (opened with this
        process's environment); returns the file's SHA-256 (for the run's manifest)."""
        started = _clocks()
        digest = checkpoint.save(self._state(node).state_dict(), as_path(path))
        self._traced(node, "save_checkpoint", started, 0.0)
        return digest

    def load_checkpoint(self, node: str, path: str, sha256: Optional[str] = None) -> str:
        """Restores ``node``'s model, optimizer and shuffling state from ``path``
        (CheckpointError if it is missing, corrupt or not the file with ``sha256``)."""
        self._state(node).load_state_dict(checkpoint.load(as_path(path), sha256))
        return path

    def wire_log(self, node: str) -> list[dict[str, Any]]:
        """What crossed the boundary for ``node``: kind, direction, per-sample shapes, count."""
        return [{"direction": direction, "kind": kind, "sample_shapes": shapes, "count": count}
                for (direction, kind, shapes), count in self._wire.get(node, Counter()).items()]

    def start_trace(self) -> None:
        """From now on, records each round step's call per node, in the order they run (a ``CallTrace`` each). For `rayagg bench`, which finds
        the critical path from them; off by default."""
        self._trace = {}

    def take_trace(self) -> dict[str, list[CallTrace]]:
        """The calls recorded since the last take (tracing goes on)."""
        trace = self._trace or {}
        if self._trace is not None:
            self._trace = {}
        return trace

    # ------------------------------------------------------------ helpers

    def _traced(self, node: str, call: str, started: tuple[float, float], torch_s: float) -> None:
        """``started``: :func:`_clocks` when the call began. The start is also kept as this
        machine's ``time.time()`` (now less the call's seconds), for ``rayagg bench --trace``."""
        if self._trace is not None:
            wall, cpu = _clocks()
            seconds = wall - started[0]
            self._trace.setdefault(node, []).append(
                CallTrace(call, seconds, torch_s, cpu - started[1], time.time() - seconds))

    def _state(self, node: str) -> NodeState:
        self._hang_if_hung()
        if node in self._stopped:
            raise NodeStoppedError(node, f"stopped: it left host {self._name}")
        try:
            return self._nodes[node]
        except KeyError:
            raise KeyError(f"host {self._name} does not carry {node} "
                           f"(it carries {describe_nodes(self._nodes) or 'nothing'})") from None

    def _record(self, node: str, direction: str, kind: str, *shapes: tuple[int, ...]) -> None:
        # Per-sample shapes (batch dimension dropped) keep the log bounded over many rounds.
        self._wire[node][(direction, kind, tuple(tuple(shape[1:]) for shape in shapes))] += 1


def _clocks() -> tuple[float, float]:
    """(wall clock, this process's CPU time), for tracing a call: a host runs one call at
    a time, so the process's CPU time in a call is the call's (all its torch threads)."""
    return time.perf_counter(), time.process_time()
