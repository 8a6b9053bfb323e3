"""Starting a Ray run, phase by phase: what ``RayRunner.start`` does before the first round.

1. the cluster must be able to hold the tree (:func:`check_resources`);
2. the run's supervisor actor is created (:func:`create_supervisor`), then this
   runtime's observers: the live view and the Prometheus metrics
   (:func:`runtime_observers`), and RUN_DIR links Ray's logs;
3. the hosts start and probe RUN_DIR (rayagg/runtime/hosts.py);
4. every leaf's bridge samples get a driver-owned object ref: encoded by the leaves and
   written to RUN_DIR/bridge/ (a new run), or read back from there (a resume)
   (:func:`place_bridge_samples`);
5. a resumed run restores every node that has a checkpoint (:func:`restore_nodes`);
6. the runner sends every node the samples of its subtree.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import ray

from rayagg.config import RunConfig
from rayagg.core.actions import FailurePolicy
from rayagg.core.balance import policy_for
from rayagg.core.capacity import Capacity, requests_capacity
from rayagg.observe import RunObserver
from rayagg.rundir import store
from rayagg.rundir.manifest import RunState
from rayagg.rundir.resume import expected_bridge_counts
from rayagg.runtime.cluster import cluster_nodes, on_driver_node
from rayagg.runtime.live_view import LivePublisher
from rayagg.runtime.ray_logs import keep_logs
from rayagg.runtime.resources import check_cluster
from rayagg.runtime.supervisor import SupervisorActor
from rayagg.runtime.telemetry import TelemetryObserver
from rayagg.runtime.waiting import await_all

if TYPE_CHECKING:
    from rayagg.runtime.runner import RayRunner


def check_resources(config: RunConfig) -> None:
    """ResourceError unless every tier fits the cluster (rayagg/runtime/resources.py)."""
    check_cluster(config, cluster_nodes(), autoscaling=config.runtime.autoscaling)


def run_tag(runner: "RayRunner") -> str:
    """The name that tags the run's metrics: RUN_DIR's, which a resumed run keeps (a
    namespace is new each time)."""
    return runner.run_dir.name if runner.run_dir is not None else runner.namespace


def create_supervisor(runner: "RayRunner") -> Any:
    """The run's supervisor actor (rayagg/runtime/supervisor.py), on the driver's Ray node,
    watching the tree as it stands before start."""
    plan, tree, dead, left = runner.plan, runner.tree, runner.dead, runner.left
    size = plan.shard_sizes
    load = {node: sum(size[leaf] for leaf in tree.leaves(node)) for node in tree.nodes}
    return SupervisorActor.options(
        name="supervisor", namespace=runner.namespace, scheduling_strategy=on_driver_node(),
    ).remote(tree, FailurePolicy.of(plan.config.supervision), policy_for(plan.config.balance), load,
             plan.label_counts, dead=dead, left=left, elastic=plan.config.tree.elastic,
             round_index=runner.round_index, run=run_tag(runner),
             capacity=Capacity.of(plan.config) if requests_capacity(plan.config) else None)


def runtime_observers(runner: "RayRunner") -> list[RunObserver]:
    """This runtime's own observers: the Prometheus metrics and, with a RUN_DIR, the live
    view (whose record ``rayagg scale`` and ``rayagg status`` find the run by; written
    now, before the hosts start). RUN_DIR also links Ray's logs."""
    observers: list[RunObserver] = [TelemetryObserver(run_tag(runner), runner.plan)]
    if runner.run_dir is not None:
        keep_logs(runner.run_dir)
        live = LivePublisher(runner, ray.get_runtime_context().gcs_address)
        live.begin()
        observers.append(live)
    return observers


def place_bridge_samples(runner: "RayRunner", resume: Optional[RunState]) -> None:
    """Gives the driver a ref to every leaf's bridge samples: read back from the run's
    stores when the resumed cut lists any (verified against the manifest; no device needs
    to encode again), else encoded by the leaves and stored in RUN_DIR/bridge/."""
    if not runner.method.carries_bridge_samples:
        return  # nothing to encode: the method moves weights, not samples
    stores = resume.bridge_stores(runner.run_dir) if resume is not None and runner.run_dir is not None else {}
    if stores:
        samples = store.read_bridge_stores(list(stores), sha256=stores,
                                           expected_counts=expected_bridge_counts(resume, runner.plan))
        runner.bridge_stores = list(stores)
        runner.bridge.stored({item.leaf: ray.put(item) for item in samples})  # the driver owns them again
        return
    leaves = [node for node in runner.tree.nodes if runner.tree.is_leaf(node)]
    calls = [runner.hosts.call(leaf, "encode") for leaf in leaves]
    samples = await_all(calls, runner.plan.config.runtime.round_timeout_s)
    # Put by the driver: the one copy of an encode's answer lives on its device's machine,
    # and is gone with that machine (docs/ray.md); the driver's own lives on its machine.
    runner.bridge.encoded({call.node: ray.put(item) for call, item in zip(calls, samples)})
    if runner.run_dir is not None:
        runner.store_bridge_samples(samples, store.store_path(runner.run_dir, runner.tree.root))


def restore_nodes(runner: "RayRunner", nodes: list[str]) -> None:
    """Restores every one of ``nodes`` that has a checkpoint in the resumed cut."""
    calls = [runner.restore_call(node) for node in nodes]
    await_all([call for call in calls if call is not None], runner.plan.config.runtime.startup_timeout_s)
