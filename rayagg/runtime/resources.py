"""What each tier asks Ray for, and whether the cluster can ever give it. Pure code.

Ray leaves an actor whose request no node can satisfy pending forever (or until an
autoscaler adds a node). A run of hundreds of actors then hangs without a word, so
the runner checks every tier against the cluster's nodes before creating anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from rayagg.config import Resources, RunConfig
from rayagg.errors import ResourceError

MB = 2**20


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


def ray_request(resources: Resources) -> dict[str, float]:
    """The resource amounts one actor of a tier asks for, in Ray's names."""
    request = {"CPU": resources.num_cpus, "GPU": resources.num_gpus, **resources.custom}
    if resources.memory_mb is not None:
        request["memory"] = float(resources.memory_mb * MB)
    return {name: amount for name, amount in request.items() if amount > 0}


def actor_options(resources: Resources) -> dict[str, Any]:
    """Keyword arguments for ``ActorClass.options`` that apply a tier's limits."""
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus,
                               "resources": dict(resources.custom)}
    if resources.memory_mb is not None:
        options["memory"] = resources.memory_mb * MB
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

    Always checked: some single node must fit one actor of each tier. Without an
    autoscaler also checked: the cluster's totals must fit all actors at once, else
    the last ones would wait forever.
    """
    cluster = "\n".join(f"  {node.describe()}" for node in nodes) or "  (no alive nodes)"
    totals: dict[str, float] = {}
    for tier, count in zip(config.tree.tiers, config.tree.counts()):
        request = ray_request(tier.resources)
        if not any(fits(request, tier.resources.labels, node) for node in nodes):
            labels = f" with labels {tier.resources.labels}" if tier.resources.labels else ""
            raise ResourceError(
                f"tier {tier.name!r}: no node can host one actor requesting {request}{labels}; "
                f"the cluster's nodes are:\n{cluster}")
        for name, amount in request.items():
            totals[name] = totals.get(name, 0.0) + amount * count
    if autoscaling:
        return
    for name, needed in totals.items():
        available = sum(node.resources.get(name, 0.0) for node in nodes)
        if needed > available + 1e-9:
            raise ResourceError(
                f"the tree needs {needed:g} {name} in all but the cluster has {available:g}; "
                f"lower the tiers' requests or add nodes (runtime.autoscaling: true waits for an "
                f"autoscaler instead). The cluster's nodes are:\n{cluster}")
