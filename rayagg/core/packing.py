"""Which host actor carries which tree nodes. Pure code: no Ray, no torch.

A tier's ``nodes_per_actor`` packs its nodes, in index order, onto host actors of at
most that many nodes each. The packing is a function of the config alone (node names
are ``<tier>-<index>``), so the driver, every host and ``rayagg status`` compute the
same one without asking each other. An elastic leaf tier is packed for every device
it may ever have (``max_devices``): a joining device is a node on its host, started
with the host if the host is not running yet; a host whose devices all left is
stopped, which lets an autoscaler release its machine.

Names: with ``nodes_per_actor: 1`` (the default) a host is named after its one node
(``edge-2``), as when every node was its own actor; packed hosts are named
``<tier>-host-<i>`` (``device-host-3`` carries device-96 .. device-127 when 32 share a
host).
"""
from __future__ import annotations

from dataclasses import dataclass

from rayagg.config import RunConfig
from rayagg.nodes import node_name


@dataclass(frozen=True)
class Host:
    """One host actor: its name, its tier and the nodes it is laid out to carry."""

    name: str
    tier: str
    nodes: tuple[str, ...]


def pack(config: RunConfig) -> list[Host]:
    """Every host of the run, tier by tier from the root; a tier's last host may carry
    fewer nodes than ``nodes_per_actor``."""
    hosts = []
    for tier, capacity in zip(config.tree.tiers, config.tree.capacities()):
        nodes = [node_name(tier.name, index) for index in range(capacity)]
        size = tier.nodes_per_actor
        for start in range(0, len(nodes), size):
            chunk = tuple(nodes[start:start + size])
            name = chunk[0] if size == 1 else f"{tier.name}-host-{start // size}"
            hosts.append(Host(name, tier.name, chunk))
    return hosts


def home_hosts(hosts: list[Host]) -> dict[str, str]:
    """node -> the name of the host laid out to carry it."""
    return {node: host.name for host in hosts for node in host.nodes}
