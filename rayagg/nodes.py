"""Node names and a node's lifecycle: the one place that spells them. Pure.

A node is named ``<tier>-<index>`` (``cloud-0``, ``edge-2``, ``device-17``): the tier's
name (``config.tree``: lower-case letters, digits and ``_``, so never a ``-``) and the
node's index within its tier. Everything that makes or reads a name goes through the
helpers here, so the spelling can never drift between modules.
"""
from __future__ import annotations

from enum import Enum
from typing import Container, Iterable


def node_name(tier: str, index: int) -> str:
    """The name of node ``index`` of ``tier``: ``node_name("edge", 2) == "edge-2"``."""
    return f"{tier}-{index}"


def split_name(node: str) -> tuple[str, int]:
    """``"edge-2"`` -> ``("edge", 2)``; ValueError for a string that is no node name."""
    tier, dash, index = node.rpartition("-")
    if not dash or not tier or not index.isdigit():
        raise ValueError(f"{node!r} is not a node name (<tier>-<index>)")
    return tier, int(index)


def tier_of(node: str) -> str:
    """The tier in a node's name: ``"edge-2"`` -> ``"edge"``."""
    return split_name(node)[0]


def index_of(node: str) -> int:
    """The index in a node's name: ``"edge-2"`` -> ``2``."""
    return split_name(node)[1]


def is_node_of(node: str, tier: str) -> bool:
    """Whether ``node`` is a well-formed name of a node of ``tier``."""
    try:
        return split_name(node)[0] == tier
    except ValueError:
        return False


def by_index(nodes: Iterable[str]) -> list[str]:
    """``nodes`` sorted by tier name, then index (``device-2`` before ``device-10``)."""
    return sorted(nodes, key=split_name)


def describe_nodes(nodes: Iterable[str]) -> str:
    """A short list of node names: runs of consecutive indices of one tier are shown as
    ``device-0..31``."""
    parts: list[str] = []
    run: list[tuple[str, int]] = []

    def flush() -> None:
        if run:
            tier, first = run[0]
            parts.append(node_name(tier, first) if len(run) == 1 else f"{node_name(tier, first)}..{run[-1][1]}")
            run.clear()

    for node in nodes:
        tier, index = split_name(node)
        if run and (run[-1][0] != tier or run[-1][1] + 1 != index):
            flush()
        run.append((tier, index))
    flush()
    return ", ".join(parts)


class NodeStatus(str, Enum):
    """Where a node is in its life. Supervision moves nodes between these (every move is
    a logged action: rayagg/core/actions.py):

    * UNUSED: an elastic device that has a name and a shard but never joined the tree;
    * STARTING: built again (restarted, re-joined or joining), not heard from yet: its
      silence does not count against it until its first heartbeat;
    * LIVE: in the tree and running;
    * DEAD: declared dead (its host died, a call to it failed, or it fell silent);
    * LEFT: an elastic device drained at a round boundary (also not running).

    The values are the words the live view and ``rayagg status`` show.
    """

    UNUSED = "unused"
    STARTING = "starting"
    LIVE = "live"
    DEAD = "dead"
    LEFT = "left"

    @property
    def running(self) -> bool:
        """Whether a node in this state runs on a host (STARTING or LIVE)."""
        return self in (NodeStatus.STARTING, NodeStatus.LIVE)


def status_of(node: str, *, in_tree: Container[str], dead: Container[str], left: Container[str],
              starting: Container[str] = ()) -> NodeStatus:
    """``node``'s status from the sets the runtime keeps: the tree's nodes, the dead (which
    include those that left), those that left, and those starting."""
    if node not in in_tree:
        return NodeStatus.UNUSED
    if node in left:
        return NodeStatus.LEFT
    if node in dead:
        return NodeStatus.DEAD
    return NodeStatus.STARTING if node in starting else NodeStatus.LIVE
