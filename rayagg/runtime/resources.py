"""What each tier asks Ray for, and whether the cluster can ever give it. Pure code.

Ray leaves an actor whose request no node can satisfy pending forever (or until an
autoscaler adds a node). A run of hundreds of actors then hangs without a word, so
the runner checks every tier against the cluster's nodes before creating anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from rayagg.config import Resources, RunConfig
from rayagg.core.capacity import MB, ray_request
from rayagg.errors import ResourceError


@dataclass(frozen=True)
class ClusterNode:
    """One alive Ray node: its total resources and labels (from ``ray.nodes()``)."""

    address: str
    resources: Mapping[str, float]
    labels: Mapping[str, str]

    def describe(self) -> str:
        shown = {k: v for k, v in self.resources.items()
                 if not k.startswith("node:") and k != "object_store_memory"}
        labels = {k: v for k, v in self.labels.items() if not k.startswith("ray.io/")}
        return f"{self.address} {shown}" + (f" labels {labels}" if labels else "")


def actor_options(resources: Resources, nodes: int = 1) -> dict[str, Any]:
    """Keyword arguments for ``ActorClass.options`` that apply a tier's limits to an actor
    carrying ``nodes`` of its nodes."""
    options: dict[str, Any] = {"num_cpus": resources.num_cpus * nodes, "num_gpus": resources.num_gpus * nodes,
                               "resources": {name: amount * nodes for name, amount in resources.custom.items()}}
    if resources.memory_mb is not None:
        options["memory"] = resources.memory_mb * nodes * MB
    if resources.labels:
        options["label_selector"] = dict(resources.labels)
    return options


def fits(request: Mapping[str, float], labels: Mapping[str, str], node: ClusterNode) -> bool:
    """True if ``node`` alone could host one actor with ``request`` and ``labels``."""
    enough = all(node.resources.get(name, 0.0) >= amount for name, amount in request.items())
    labelled = all(node.labels.get(key) == value for key, value in labels.items())
    return enough and labelled


def check_cluster(config: RunConfig, nodes: list[ClusterNode], *, autoscaling: bool) -> None:
    """Raises ResourceError if a tier can never be scheduled on ``nodes``.

    Without an autoscaler: some single node must fit the largest host actor of each tier
    (its ``nodes_per_actor`` nodes' requests together), and the cluster's totals must fit
    all nodes at once (an elastic tier's ``max_devices``), else the last hosts would wait
    forever. With one (``runtime.autoscaling``) nothing is checked here: a worker group
    may be scaled to zero, and a host that fits no machine yet waits for one (a request
    no node type can satisfy fails after ``startup_timeout_s``, naming the host, its
    request and the machines up).
    """
    cluster = "\n".join(f"  {node.describe()}" for node in nodes) or "  (no alive nodes)"
    totals: dict[str, float] = {}
    # An elastic tier counts every device it may ever have: without an autoscaler the
    # cluster must hold them all, or a join would wait for resources that never come.
    for tier, count in zip(config.tree.tiers, config.tree.capacities()):
        packed = min(tier.nodes_per_actor, count)
        request = ray_request(tier.resources, packed)
        if not autoscaling and not any(fits(request, tier.resources.labels, node) for node in nodes):
            labels = f" with labels {tier.resources.labels}" if tier.resources.labels else ""
            carrying = f" (carrying {packed} nodes; lower nodes_per_actor to split it)" if packed > 1 else ""
            raise ResourceError(
                f"tier {tier.name!r}: no node can host one actor requesting {request}{labels}"
                f"{carrying}; the cluster's nodes are:\n{cluster}")
        for name, amount in ray_request(tier.resources, count).items():
            totals[name] = totals.get(name, 0.0) + amount
    if autoscaling:
        return
    for name, needed in totals.items():
        available = sum(node.resources.get(name, 0.0) for node in nodes)
        if needed > available + 1e-9:
            raise ResourceError(
                f"the tree needs {needed:g} {name} in all but the cluster has {available:g}; "
                f"lower the tiers' requests or add nodes (runtime.autoscaling: true waits for an "
                f"autoscaler instead). The cluster's nodes are:\n{cluster}")
