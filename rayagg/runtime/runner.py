"""RayRunner: the tree as Ray actors, driven and supervised from the driver process.

Design, from RAY_NOTES.md:

* The driver creates every node actor (named ``<tier>-<index>`` in the run's
  namespace) and the supervisor, so no actor's death takes another with it.
* The driver calls ``leaf.encode.remote()`` and so owns every bridge sample's object
  ref; parents receive the refs of their subtree as arguments. When an edge dies, its
  orphans' samples are re-sent to their new parent from those refs: nothing is asked of
  the dead node and no bridge sample is lost.
* A round is submitted as one graph of actor calls: logits refs feed ``learn`` calls
  directly. Ray runs calls to one actor in submission order, so every node does the
  same work in the same order as the sequential driver, while independent subtrees
  run at the same time.
* Waits poll the supervisor every heartbeat interval and apply its decisions (kill,
  re-parent, drop, restart). A round that loses a node is retried once on the repaired
  tree; pairs that had finished before the failure train again in the retry.
* Every wait has a deadline; Ray's exceptions become the project's errors naming the
  node and the call.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import ray
from ray import exceptions as ray_errors
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayagg import store
from rayagg.errors import ClusterError, NodeDiedError, NodeError, NodeTimeoutError, RayaggError, RecoveryError
from rayagg.events import Event
from rayagg.plan import Plan
from rayagg.rundir import RunState
from rayagg.runtime.actor import NodeActor
from rayagg.runtime.resources import ClusterNode, actor_options, check_cluster, ray_request
from rayagg.runtime.supervisor import SupervisorActor
from rayagg.supervision import DeclareDead, DropLeaf, Policy, Rejoin, Reparent, Restart


# How long joining a cluster by address may take to reach the head before it is an error:
# ray.init itself retries an unreachable address for minutes.
CONNECT_TIMEOUT_S = 10.0


def connect(address: Optional[str]) -> bool:
    """Starts a local Ray (address None) or joins ``address``; returns True if we started it.

    Ray 2.60 enables token auth by default; a client joining by address needs
    RAY_AUTH_MODE=token in its environment before ``import ray``: the CLI sets it
    before it imports this module. Joins an already initialised Ray session as is.
    Raises ClusterError naming the address when nothing answers there within
    CONNECT_TIMEOUT_S or Ray refuses to join.
    """
    if ray.is_initialized():
        return False
    if address is None:
        # "local" starts a new Ray even where another one runs on this machine.
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
        return True
    _probe(address)
    try:
        ray.init(address=address, logging_level="WARNING")
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError, ... from ray.init
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {exc}") from exc
    return False


def _probe(address: str) -> None:
    """Fails fast when nothing listens at ``address`` (host:port, or ray://host:port);
    'auto' is left to ray.init, which fails at once when it finds no cluster."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r} within "
                           f"{CONNECT_TIMEOUT_S:g} s: {exc} (is `ray start --head` running there, "
                           "and is the port open to this machine?)") from exc


class RayRunner:
    """Runs ``plan``'s tree on Ray; see the module docstring for the design."""

    def __init__(self, plan: Plan, *, address: Optional[str] = None,
                 namespace: Optional[str] = None):
        self.plan = plan
        self.tree = plan.tree
        self.dead: frozenset[str] = frozenset()
        self.events: list[Event] = []
        self.round_index = 0
        self._address = address
        self._runtime = plan.config.runtime
        self._supervision = plan.config.supervision
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.namespace = namespace or f"rayagg-{plan.config.name}-{stamp}-{os.getpid()}"
        self.actors: dict[str, Any] = {}
        self.bridge_refs: dict[str, Any] = {}  # leaf -> ref of its BridgeSamples, owned here
        self._held: dict[str, set[str]] = {}  # node -> leaves whose samples it holds
        self.checkpoint: Optional[RunState] = None  # the last complete cut: restores read it
        self.bridge_store: Optional[pathlib.Path] = None
        self._run_dir: Optional[pathlib.Path] = None
        self._started_ray = False
        self._connected = False

    # ---------------------------------------------------------------- lifecycle

    def connect(self) -> None:
        """Starts or joins Ray (see :func:`connect`); ``start`` does it if not done yet."""
        if not self._connected:
            self._started_ray = connect(self._address)
            self._connected = True

    def start(self, run_dir: Optional[pathlib.Path] = None, resume: Optional[RunState] = None) -> None:
        """Checks resources, creates the supervisor and every live node actor, and sends the
        bridge samples up the tree. A fresh run has the leaves encode and persists the
        samples to RUN_DIR/bridge/; a resumed run reads them back from there (verified
        against the manifest; no device needs to encode again) and restores every node
        that has a checkpoint."""
        self._run_dir = pathlib.Path(run_dir).resolve() if run_dir else None
        if resume is not None:
            self.tree, self.dead, self.round_index = resume.tree(self.tree), frozenset(resume.dead), resume.round
            self.checkpoint = resume
        self.connect()
        check_cluster(self.plan.config, _cluster_nodes(), autoscaling=self._runtime.autoscaling)
        self._plan_ref = ray.put(self.plan)
        self.supervisor = SupervisorActor.options(
            name="supervisor", namespace=self.namespace, scheduling_strategy=_on_driver_node(),
        ).remote(self.tree, _policy(self._supervision), self._subtree_sizes(), self.dead)
        live = [node for node in self.tree.nodes if node not in self.dead]
        for node in live:
            self._create(node)
        self.placement = self._wait_started(live)
        stored = self._stored_bridge_samples(resume)
        if stored is None:
            self._encode_leaves(self._run_dir)
        else:
            self._read_bridge_samples(*stored)
        for node in live:
            if resume is not None and node in resume.checkpoints:
                self._restore(node)
        self._sync_bridge_samples()

    def _stored_bridge_samples(self, resume: Optional[RunState]) -> Optional[tuple[pathlib.Path, str]]:
        """(path, SHA-256) of the bridge-sample store a resumed run reads, or None: a fresh
        run, or one whose checkpoint lists no store (made with --local), encodes anew."""
        if resume is None or self._run_dir is None:
            return None
        path = store.store_path(self._run_dir, self.tree.root)
        digest = resume.digest_of(path, self._run_dir)
        return None if digest is None else (path, digest)

    def _encode_leaves(self, run_dir: Optional[pathlib.Path]) -> None:
        leaves = [n for n in self.tree.nodes if self.tree.is_leaf(n)]
        self.bridge_refs = {leaf: self.actors[leaf].encode.remote() for leaf in leaves}
        self._held = {leaf: {leaf} for leaf in leaves}  # encode() keeps a leaf's own samples
        if run_dir is not None:
            samples = self._await([(leaf, "encode", ref) for leaf, ref in self.bridge_refs.items()],
                                  self._runtime.round_timeout_s)
            self.bridge_store = store.store_path(run_dir, self.tree.root)
            store.write_bridge_samples(samples, self.bridge_store)

    def _read_bridge_samples(self, path: pathlib.Path, sha256: str) -> None:
        """The durable copy replaces the devices: the driver puts (and so owns) each leaf's
        samples again."""
        expected = {leaf: len(shard) for leaf, shard in self.plan.shards.items()}
        samples = store.read_bridge_samples(path, expected_counts=expected, sha256=sha256)
        self.bridge_store = path
        self.bridge_refs = {item.leaf: ray.put(item) for item in samples}
        self._held = {}

    def close(self) -> None:
        """Kills the node actors and the supervisor, and stops Ray if this runner started it."""
        for actor in [*self.actors.values(), getattr(self, "supervisor", None)]:
            if actor is not None:
                _kill(actor)
        self.actors = {}
        if self._started_ray:
            ray.shutdown()

    def _create(self, node: str) -> None:
        options = actor_options(self.plan.tier(node).resources)
        self.actors[node] = NodeActor.options(
            name=node, namespace=self.namespace, max_restarts=0, **options,
        ).remote(self._plan_ref, node)

    def _wait_started(self, nodes: list[str]) -> dict[str, dict]:
        """Waits until ``nodes`` run and heartbeat; returns where each one runs."""
        interval = self._supervision.heartbeat_interval_s
        pending = [(n, "start", self.actors[n].ready.remote()) for n in nodes]
        try:
            placement = dict(zip(nodes, self._await(pending, self._runtime.startup_timeout_s)))
            beats = [(n, "start_heartbeats",
                      self.actors[n].start_heartbeats.remote(self.supervisor, interval)) for n in nodes]
            self._await(beats, self._runtime.startup_timeout_s)
        except NodeTimeoutError as exc:
            raise NodeTimeoutError(exc.node, f"{exc} — {self._unscheduled_hint(exc.node)}") from exc
        return placement

    def _unscheduled_hint(self, node: str) -> str:
        request = ray_request(self.plan.tier(node).resources)
        cluster = "; ".join(n.describe() for n in _cluster_nodes())
        return f"not scheduled? it requests {request}; the cluster has: {cluster}"

    def _subtree_sizes(self) -> dict[str, int]:
        size = {leaf: len(shard) for leaf, shard in self.plan.shards.items()}
        return {node: sum(size[leaf] for leaf in self.tree.leaves(node)) for node in self.tree.nodes}

    # ---------------------------------------------------------------- bridge samples

    def _leaves(self, node: str) -> list[str]:
        """The leaves whose bridge samples ``node`` trains on: its subtree's, less dead
        leaves when their samples are not kept."""
        leaves = self.tree.leaves(node)
        if self._supervision.keep_dead_leaf_samples:
            return leaves
        return [leaf for leaf in leaves if leaf not in self.dead]

    def _sync_bridge_samples(self) -> None:
        """Sends every live node the refs of the leaves it should hold but does not (all of
        them at start, a moved subtree's after re-parenting, everything after a restart)."""
        pending = []
        for node in self.tree.nodes:
            if node in self.dead:
                continue
            wanted, held = set(self._leaves(node)), self._held.setdefault(node, set())
            if wanted - held:
                refs = [self.bridge_refs[leaf] for leaf in sorted(wanted - held)]
                pending.append((node, "add_bridge_samples", self.actors[node].add_bridge_samples.remote(*refs)))
            if held - wanted:
                pending.append((node, "remove_bridge_samples",
                                self.actors[node].remove_bridge_samples.remote(sorted(held - wanted))))
            self._held[node] = wanted
        self._settle(pending, self._runtime.round_timeout_s)

    # ---------------------------------------------------------------- rounds

    def train_round(self) -> None:
        """Runs every live pair once; a round that loses a node is retried once."""
        self.round_index += 1
        if self._supervision.rejoin_dead_leaves:
            for leaf in sorted(n for n in self.dead if self.tree.is_leaf(n)):
                self._apply_decision(self._ask_supervisor(self.supervisor.rejoin.remote(leaf)))
        for attempt in (1, 2):
            settled = self._settle(self._submit_pairs(), self._runtime.round_timeout_s)
            if not settled.failed:
                return
            lost = ", ".join(sorted(settled.died)) or "a node"
            if attempt == 2:
                raise RecoveryError(f"round {self.round_index} lost {lost} again in its retry")
            # Deaths reported by failed calls are decided and applied before the retry.
            self.supervise()
            self._event("retry", "", f"round {self.round_index} retried after losing {lost}")

    def _submit_pairs(self) -> list[tuple[str, str, Any]]:
        pending = []
        for child, parent in self.tree.pairs():
            leaves = self._leaves(child)
            if child in self.dead or parent in self.dead or not leaves:
                continue
            parent_logits = self.actors[parent].logits.remote(leaves)
            child_done = self.actors[child].learn.remote(leaves, parent_logits)
            child_logits = self.actors[child].logits.remote(leaves)
            parent_done = self.actors[parent].learn.remote(leaves, child_logits)
            pending += [(parent, "logits", parent_logits), (child, "learn", child_done),
                        (child, "logits", child_logits), (parent, "learn", parent_done)]
        return pending

    def evaluate(self) -> dict[str, tuple[float, float, float]]:
        """Scores every live node; a node that dies meanwhile is left out."""
        return self._call_live("evaluate")

    def bridge_sample_counts(self) -> dict[str, int]:
        return self._call_live("bridge_sample_count")

    def wire_logs(self) -> dict[str, list[dict[str, Any]]]:
        return self._call_live("wire_log")

    def save_checkpoints(self, directory: pathlib.Path) -> dict[str, str]:
        """Each live actor writes its own checkpoint to ``directory`` (RUN_DIR must be shared
        storage on a cluster); returns node -> the file's SHA-256."""
        directory = directory.resolve()
        return self._call_live("save_checkpoint", lambda node: (str(directory / f"{node}.pt"),))

    def _call_live(self, method: str, args=lambda node: ()) -> dict[str, Any]:
        live = [n for n in self.tree.nodes if n not in self.dead]
        pending = [(n, method, getattr(self.actors[n], method).remote(*args(n))) for n in live]
        return self._settle(pending, self._runtime.round_timeout_s).values

    # ---------------------------------------------------------------- supervision

    def supervise(self) -> None:
        """Asks the supervisor to decide now and applies its actions."""
        self._apply_decision(self._ask_supervisor(self.supervisor.tick.remote()))

    def _ask_supervisor(self, ref: Any) -> Any:
        try:
            return ray.get(ref, timeout=self._runtime.startup_timeout_s)
        except ray_errors.RayActorError as exc:
            raise NodeDiedError("supervisor", "the supervisor actor died; the run cannot "
                                              "detect failures without it") from exc
        except ray_errors.GetTimeoutError as exc:
            raise NodeTimeoutError("supervisor", "did not answer within "
                                                 f"{self._runtime.startup_timeout_s:g} s") from exc

    def _apply_decision(self, result: dict[str, Any]) -> None:
        if result["fatal"]:
            raise RecoveryError(result["fatal"])
        self.tree, self.dead = result["tree"], result["dead"]
        for action in result["actions"]:
            self._apply(action)
        if result["actions"]:
            self._sync_bridge_samples()

    def _apply(self, action) -> None:
        self._event(action.kind.value, action.node, action.describe())
        if isinstance(action, DeclareDead):
            _kill(self.actors[action.node])
        elif isinstance(action, (Restart, Rejoin)):
            self._restart(action.node)
        elif not isinstance(action, (Reparent, DropLeaf)):
            raise TypeError(f"unknown action {action!r}")

    def _restart(self, node: str) -> None:
        """A fresh actor under the same name, restored from its last checkpoint."""
        _kill(self.actors[node])
        self._create(node)
        self.placement.update(self._wait_started([node]))
        self._restore(node)
        self._held[node] = set()

    def _restore(self, node: str) -> None:
        """Restores ``node`` from the last complete checkpoint (verified by its SHA-256)."""
        located = self.checkpoint.located(node, self._run_dir) if self.checkpoint and self._run_dir else None
        if located is None:
            self._event("restart_fresh", node, f"{node} has no checkpoint yet: it starts from scratch")
            return
        path, digest = located
        self._await([(node, "load_checkpoint", self.actors[node].load_checkpoint.remote(str(path), digest))],
                    self._runtime.startup_timeout_s)

    def _event(self, kind: str, node: str, detail: str) -> None:
        self.events.append(Event.now(self.round_index, kind, node, detail))

    # ---------------------------------------------------------------- waiting

    def _settle(self, pending: list[tuple[str, str, Any]], timeout_s: float) -> "_Settled":
        """Waits for every call, supervising meanwhile.

        A call that fails because an actor died is reported to the supervisor at once
        and counted in the result; a call that fails for another reason raises
        NodeError; the deadline raises NodeTimeoutError.
        """
        deadline = time.monotonic() + timeout_s
        origin = {ref: (node, call) for node, call, ref in pending}
        remaining, settled = list(origin), _Settled()
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = sorted({origin[ref][0] for ref in remaining})
                node, call = origin[remaining[0]]
                raise NodeTimeoutError(node, f"{call} did not finish within {timeout_s:g} s "
                                             f"(still waiting on {', '.join(waiting)})")
            ready, remaining = ray.wait(remaining, num_returns=len(remaining),
                                        timeout=min(self._supervision.heartbeat_interval_s, left))
            for ref in ready:
                self._collect(ref, *origin[ref], settled)
            self.supervise()
        return settled

    def _collect(self, ref: Any, node: str, call: str, settled: "_Settled") -> None:
        try:
            settled.values[node] = ray.get(ref, timeout=0)
            return
        except ray_errors.RayActorError as exc:
            death = exc
        except ray_errors.RayTaskError as exc:
            if not isinstance(exc.cause, ray_errors.RayActorError):
                raise NodeError(node, f"round {self.round_index}: {call} failed: "
                                      f"{_describe(exc.cause, node)}") from exc
            death = exc.cause
        settled.failed.append((node, call))
        # A call that only depended on a dead node's result fails with that node's error:
        # the actor id names the node that died. Unknown ids are left to the heartbeats.
        dead = self._node_by_actor_id(death.actor_id)
        if dead is not None:
            settled.died.add(dead)
            # Synchronous: an async actor may run calls out of order, and a report that
            # overtook the next tick would kill the node's replacement.
            self._ask_supervisor(self.supervisor.report_death.remote(dead))

    def _node_by_actor_id(self, actor_id: Optional[str]) -> Optional[str]:
        for node, actor in self.actors.items():
            if actor_id is not None and actor._actor_id.hex() == actor_id:
                return node
        return None

    def _await(self, pending: list[tuple[str, str, Any]], timeout_s: float) -> list[Any]:
        """Waits for every ref by one deadline, without recovery (start-up, restarts);
        returns the values in order or raises the project's error for the first failure."""
        refs = [ref for _, _, ref in pending]
        _, remaining = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if remaining:
            stuck = [node for node, _, ref in pending if ref in set(remaining)]
            call = next(call for _, call, ref in pending if ref == remaining[0])
            raise NodeTimeoutError(stuck[0], f"{call} did not finish within {timeout_s:g} s "
                                             f"(still waiting on {', '.join(stuck)})")
        return [_get(ref, node, call) for node, call, ref in pending]


@dataclass
class _Settled:
    """What a batch of calls came to: values by node, the calls that failed because an
    actor died, and the nodes known to have died."""

    values: dict[str, Any] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    died: set[str] = field(default_factory=set)


def _get(ref: Any, node: str, call: str) -> Any:
    """``ray.get`` of a finished ref, with Ray's exceptions turned into the project's."""
    try:
        return ray.get(ref, timeout=0)
    except ray_errors.RayActorError as exc:
        raise NodeDiedError(node, f"died during {call}: {type(exc).__name__}") from exc
    except ray_errors.RayTaskError as exc:
        raise NodeError(node, f"{call} failed: {_describe(exc.cause, node)}") from exc


def _describe(cause: BaseException, node: str) -> str:
    """An exception from inside ``node``'s actor, for a message that already names the node:
    ours as written (less a leading node name), others with their type."""
    if isinstance(cause, RayaggError):
        return str(cause).removeprefix(f"{node}: ")
    return f"{type(cause).__name__}: {cause}"


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead or never started: nothing left to stop
        pass


def _policy(config) -> Policy:
    return Policy(heartbeat_interval_s=config.heartbeat_interval_s, max_missed=config.max_missed,
                  restart_root=config.restart_root, replace_dead=config.replace_dead,
                  max_restarts=config.max_restarts)


def _on_driver_node() -> NodeAffinitySchedulingStrategy:
    """Places an actor on the Ray node that runs this driver. The supervisor goes there:
    it then dies only with the driver, which the run cannot survive anyway, instead of
    with whichever worker machine Ray picked (a removed edge machine once took it along)."""
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def _cluster_nodes() -> list[ClusterNode]:
    return [ClusterNode(node["NodeManagerAddress"], node["Resources"], node.get("Labels", {}))
            for node in ray.nodes() if node["Alive"]]
