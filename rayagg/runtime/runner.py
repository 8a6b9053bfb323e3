"""RayRunner: the tree as Ray actors, driven from the driver process.

Design, from RAY_NOTES.md:

* The driver creates every node actor (named ``<tier>-<index>`` in the run's
  namespace), so no actor's death takes another with it.
* The driver calls ``leaf.encode.remote()`` and so owns every bridge sample's object
  ref; parents receive the refs of their subtree as arguments. An edge that dies
  therefore loses no bridge sample: the refs live as long as the driver.
* A round is submitted as one graph of actor calls: logits refs feed ``learn`` calls
  directly. Ray runs calls to one actor in submission order, so every node does the
  same work in the same order as the sequential driver, while independent subtrees
  run at the same time.
* Every wait has a deadline; Ray's exceptions become NodeDiedError, NodeTimeoutError
  or NodeError naming the node and the call.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import time
from typing import Any, Optional

import ray
from ray import exceptions as ray_errors

from rayagg.errors import NodeDiedError, NodeError, NodeTimeoutError
from rayagg.plan import Plan
from rayagg.runtime.actor import NodeActor
from rayagg.runtime.resources import ClusterNode, actor_options, check_cluster, ray_request


def connect(address: Optional[str]) -> bool:
    """Starts a local Ray (address None) or joins ``address``; returns True if we started it.

    Ray 2.60 enables token auth by default; a client joining by address needs
    RAY_AUTH_MODE=token in its environment before ``import ray``: the CLI sets it
    before it imports this module.
    Joins an already initialised Ray session (e.g. a test's) as is.
    """
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
        return True
    ray.init(address=address, logging_level="WARNING")
    return False


class RayRunner:
    """Runs ``plan``'s tree on Ray; see the module docstring for the design."""

    def __init__(self, plan: Plan, *, address: Optional[str] = None,
                 namespace: Optional[str] = None):
        self.plan = plan
        self.tree = plan.tree
        self._address = address
        self._timeouts = plan.config.runtime
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.namespace = namespace or f"rayagg-{plan.config.name}-{stamp}-{os.getpid()}"
        self.actors: dict[str, Any] = {}
        self.bridge_refs: dict[str, Any] = {}  # leaf -> ref of its BridgeSamples, owned here
        self._started_ray = False

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Checks resources, creates every node actor, and sends bridge samples up the tree."""
        self._started_ray = connect(self._address)
        check_cluster(self.plan.config, _cluster_nodes(),
                      autoscaling=self.plan.config.runtime.autoscaling)
        plan_ref = ray.put(self.plan)
        for node in self.tree.nodes:
            options = actor_options(self.plan.tier(node).resources)
            self.actors[node] = NodeActor.options(
                name=node, namespace=self.namespace, max_restarts=0, **options,
            ).remote(plan_ref, node)
        self._wait_started()
        self._gather_bridge_samples()

    def close(self) -> None:
        """Kills the node actors, and stops Ray if this runner started it."""
        for actor in self.actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already dead: nothing left to stop
                pass
        self.actors = {}
        if self._started_ray:
            ray.shutdown()

    def _wait_started(self) -> None:
        pending = [(node, "start", actor.ready.remote()) for node, actor in self.actors.items()]
        try:
            self.placement = dict(zip(self.actors, self._await(pending, self._timeouts.startup_timeout_s)))
        except NodeTimeoutError as exc:
            raise NodeTimeoutError(exc.node, f"{exc} — {self._unscheduled_hint(exc.node)}") from exc

    def _unscheduled_hint(self, node: str) -> str:
        request = ray_request(self.plan.tier(node).resources)
        cluster = "; ".join(n.describe() for n in _cluster_nodes())
        return f"not scheduled? it requests {request}; the cluster has: {cluster}"

    def _gather_bridge_samples(self) -> None:
        """Leaves encode once; each ancestor gets the refs of its subtree's samples."""
        leaves = self.tree.nodes_of_tier(len(self.tree.tier_names) - 1)
        self.bridge_refs = {leaf: self.actors[leaf].encode.remote() for leaf in leaves}
        pending = [(leaf, "encode", ref) for leaf, ref in self.bridge_refs.items()]
        for node in self.tree.nodes:
            if not self.tree.is_leaf(node):
                refs = [self.bridge_refs[leaf] for leaf in self.tree.leaves(node)]
                pending.append((node, "add_bridge_samples", self.actors[node].add_bridge_samples.remote(*refs)))
        self._await(pending, self._timeouts.round_timeout_s)

    # ---------------------------------------------------------------- rounds

    def train_round(self) -> None:
        """Submits every pair of the round as one graph and waits for all of it."""
        pending = []
        for child, parent in self.tree.pairs():
            leaves = self.tree.leaves(child)
            parent_logits = self.actors[parent].logits.remote(leaves)
            child_done = self.actors[child].learn.remote(leaves, parent_logits)
            child_logits = self.actors[child].logits.remote(leaves)
            parent_done = self.actors[parent].learn.remote(leaves, child_logits)
            pending += [(parent, "logits", parent_logits), (child, "learn", child_done),
                        (child, "logits", child_logits), (parent, "learn", parent_done)]
        self._await(pending, self._timeouts.round_timeout_s)

    def evaluate(self) -> dict[str, tuple[float, float, float]]:
        pending = [(node, "evaluate", actor.evaluate.remote()) for node, actor in self.actors.items()]
        return dict(zip(self.actors, self._await(pending, self._timeouts.round_timeout_s)))

    def bridge_sample_counts(self) -> dict[str, int]:
        pending = [(node, "bridge_sample_count", actor.bridge_sample_count.remote())
                   for node, actor in self.actors.items()]
        return dict(zip(self.actors, self._await(pending, self._timeouts.round_timeout_s)))

    def save_checkpoints(self, directory: pathlib.Path) -> None:
        """Each actor writes its own checkpoint (RUN_DIR must be shared storage on a cluster)."""
        directory = directory.resolve()
        pending = [(node, "save_checkpoint", actor.save_checkpoint.remote(str(directory / f"{node}.pt")))
                   for node, actor in self.actors.items()]
        self._await(pending, self._timeouts.round_timeout_s)

    def wire_logs(self) -> dict[str, list[dict[str, Any]]]:
        pending = [(node, "wire_log", actor.wire_log.remote()) for node, actor in self.actors.items()]
        return dict(zip(self.actors, self._await(pending, self._timeouts.round_timeout_s)))

    # ---------------------------------------------------------------- waiting

    def _await(self, pending: list[tuple[str, str, Any]], timeout_s: float) -> list[Any]:
        """Waits for every ref by one deadline; returns their values in order.

        Raises the project's error for the first call that fails, or NodeTimeoutError
        naming the first node whose call is still running at the deadline.
        """
        deadline = time.monotonic() + timeout_s
        origin = {ref: (node, call) for node, call, ref in pending}
        remaining = list(origin)
        while remaining:
            left = deadline - time.monotonic()
            ready, remaining = ray.wait(remaining, num_returns=1, timeout=max(left, 0))
            if not ready:
                node, call = origin[remaining[0]]
                waiting = sorted({origin[ref][0] for ref in remaining})
                raise NodeTimeoutError(node, f"{call} did not finish within {timeout_s:g} s "
                                             f"(still waiting on {', '.join(waiting)})")
            _get(ready[0], *origin[ready[0]])
        return [_get(ref, node, call) for node, call, ref in pending]


def _get(ref: Any, node: str, call: str) -> Any:
    """``ray.get`` of a finished ref, with Ray's exceptions turned into the project's."""
    try:
        return ray.get(ref, timeout=0)
    except (ray_errors.ActorDiedError, ray_errors.ActorUnavailableError) as exc:
        raise NodeDiedError(node, f"died during {call}: {type(exc).__name__}") from exc
    except ray_errors.RayTaskError as exc:
        raise NodeError(node, f"{call} failed: {exc.cause!r}") from exc
    except ray_errors.GetTimeoutError as exc:
        raise NodeTimeoutError(node, f"{call} timed out") from exc


def _cluster_nodes() -> list[ClusterNode]:
    return [ClusterNode(node["NodeManagerAddress"], node["Resources"], node.get("Labels", {}))
            for node in ray.nodes() if node["Alive"]]
