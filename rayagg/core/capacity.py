"""What the tree asks an autoscaler for, so that a scale-up's machines boot while the
round in flight trains. Pure code: no Ray, no torch (the call is rayagg/runtime/capacity.py).

Ray's ``request_resources(bundles=...)`` sets a standing target, not an increment: each
call replaces the last, and the autoscaler keeps machines that could hold every bundle
at once, packed on their total resources as if idle, until a later call lowers it
(``bundles=[]`` withdraws it). So a run always asks for the whole tree it is about to run:
one bundle per host actor that carries a running node, the cloud and edges included
(machines already up hold those without a launch); a host's bundle is what the host
actor itself asks for, its laid-out nodes' requests summed (:func:`ray_request`).

When (docs/elastic.md, "Machines before the boundary"):

* a ``rayagg scale`` request is accepted: the tree of the round in flight plus the
  devices the request will make active (the supervisor asks before it answers);
* at every round boundary: the tree of the round about to run plus the devices of a
  schedule step at the round after it; a scale-down is lowered here, once its devices
  are about to leave (the autoscaler removes only idle machines anyway);
* when the run ends: withdrawn.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

from rayagg.config import Resources, RunConfig
from rayagg.core.membership import Change, Members, toward
from rayagg.core.packing import pack
from rayagg.core.tree import Tree
from rayagg.nodes import index_of, node_name

MB = 2**20


def ray_request(resources: Resources, nodes: int = 1) -> dict[str, float]:
    """What one actor carrying ``nodes`` nodes of a tier asks for, in Ray's names: the sum
    of its nodes' requests, so packing never hides what the nodes use."""
    request = {"CPU": resources.num_cpus * nodes, "GPU": resources.num_gpus * nodes,
               **{name: amount * nodes for name, amount in resources.custom.items()}}
    if resources.memory_mb is not None:
        request["memory"] = float(resources.memory_mb * nodes * MB)
    return {name: amount for name, amount in request.items() if amount > 0}


def requests_capacity(config: RunConfig) -> bool:
    """Whether the run asks the autoscaler ahead: an elastic leaf tier with
    ``request_resources`` on a cluster declared autoscaling (``runtime.autoscaling``; on a
    fixed cluster the machines are all there and the call is left alone)."""
    elastic = config.tree.elastic
    return config.runtime.autoscaling and elastic is not None and elastic.request_resources


@dataclass(frozen=True)
class Demand:
    """Bundles for ``request_resources``, one per host, with each one's label selector."""

    bundles: tuple[Mapping[str, float], ...] = ()
    labels: tuple[Mapping[str, str], ...] = ()

    def describe(self) -> str:
        """``2 x {'device_slot': 2.0}, 1 x {'CPU': 0.5}``; ``nothing`` when empty."""
        counts: dict[str, int] = {}
        for bundle in self.bundles:
            key = str(dict(sorted(bundle.items())))
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{count} x {key}" for key, count in counts.items()) or "nothing"


@dataclass(frozen=True)
class Capacity:
    """The run's host layout with each host's bundle, and the elastic tier's names."""

    hosts: tuple[tuple[frozenset[str], Mapping[str, float], Mapping[str, str]], ...]
    devices: tuple[str, ...] = field(default=())  # every name of the elastic tier, in index order

    @classmethod
    def of(cls, config: RunConfig) -> "Capacity":
        tiers = {tier.name: tier for tier in config.tree.tiers}
        hosts = tuple((frozenset(host.nodes), ray_request(tiers[host.tier].resources, len(host.nodes)),
                       dict(tiers[host.tier].resources.labels)) for host in pack(config))
        leaf = config.tree.tiers[-1].name
        devices = tuple(node_name(leaf, index) for index in range(config.tree.capacities()[-1]))
        return cls(hosts, devices)

    def demand(self, nodes: Iterable[str]) -> Demand:
        """One bundle per host that carries any of ``nodes`` (a host asking for nothing is
        left out), in layout order."""
        nodes = frozenset(nodes)
        chosen = [(bundle, labels) for carried, bundle, labels in self.hosts if carried & nodes and bundle]
        return Demand(tuple(bundle for bundle, _ in chosen), tuple(labels for _, labels in chosen))

    def members(self, tree: Tree, dead: Iterable[str]) -> Members:
        return Members.of(tree, dead, self.devices)

    def planned(self, tree: Tree, dead: Iterable[str], change: Change, next_devices: Optional[int]) -> frozenset[str]:
        """The nodes that run once ``change`` applies, plus the devices ``next_devices`` (a
        schedule step at the round after) would add: what to ask for at a boundary."""
        after = applied(self.members(tree, dead), change)
        ahead = applied(after, toward(after, next_devices)).active if next_devices is not None else ()
        return _upper_tiers(tree, dead) | set(after.active) | set(ahead)

    def requested(self, tree: Tree, dead: Iterable[str], devices: int) -> frozenset[str]:
        """The devices active once a request for ``devices`` applies to the tree as it is."""
        members = self.members(tree, dead)
        return frozenset(applied(members, toward(members, devices)).active)


def applied(members: Members, change: Change) -> Members:
    """The tier's members once ``change``'s leaves and joins are applied."""
    names = sorted(members.active + members.away + members.unused, key=index_of)
    active = (set(members.active) - set(change.leaves)) | set(change.joins)
    in_tree = set(members.active) | set(members.away) | active
    return Members(tuple(n for n in names if n in active),
                   tuple(n for n in names if n in in_tree and n not in active),
                   tuple(n for n in names if n not in in_tree))


def _upper_tiers(tree: Tree, dead: Iterable[str]) -> set[str]:
    """The live nodes of every tier above the leaves."""
    dead = set(dead)
    return {node for tier in range(len(tree.tier_names) - 1) for node in tree.nodes_of_tier(tier)
            if node not in dead}
