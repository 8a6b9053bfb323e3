"""The tree's topology: which node is whose parent. Pure data, no torch, no Ray.

Nodes are named ``<tier>-<index>`` (``cloud-0``, ``edge-2``, ``device-17``:
rayagg/nodes.py); the index counts within the tier. A :class:`Tree` is immutable:
re-parenting returns a new tree.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Mapping, Optional, Sequence

from rayagg.nodes import index_of, is_node_of, node_name, tier_of as tier_in_name


@dataclass(frozen=True)
class Tree:
    """Tier names from root to leaves, each node's tier index and each node's parent."""

    tier_names: tuple[str, ...]
    tier_of: Mapping[str, int]
    parent_of: Mapping[str, Optional[str]]

    @classmethod
    def balanced(cls, tier_names: Sequence[str], counts: Sequence[int]) -> "Tree":
        """Builds a tree where node i of a tier of n nodes hangs under node i * m // n of the
        m nodes above: i // fanout when n divides by m, else as evenly as it goes."""
        tier_of: dict[str, int] = {}
        parent_of: dict[str, Optional[str]] = {}
        for tier, (name, count) in enumerate(zip(tier_names, counts)):
            for index in range(count):
                node = node_name(name, index)
                tier_of[node] = tier
                parent = index * counts[tier - 1] // count if tier else None
                parent_of[node] = None if parent is None else node_name(tier_names[tier - 1], parent)
        return cls(tuple(tier_names), tier_of, parent_of)

    @property
    def root(self) -> str:
        return node_name(self.tier_names[0], 0)

    @cached_property
    def nodes(self) -> list[str]:
        """Every node, root first, then tier by tier in index order."""
        return sorted(self.tier_of, key=_node_order(self))

    @cached_property
    def _children(self) -> dict[str, list[str]]:
        children: dict[str, list[str]] = {node: [] for node in self.nodes}
        for node in self.nodes:
            if self.parent_of[node] is not None:
                children[self.parent_of[node]].append(node)
        return children

    def tier_name(self, node: str) -> str:
        return self.tier_names[self.tier_of[node]]

    def is_leaf(self, node: str) -> bool:
        return self.tier_of[node] == len(self.tier_names) - 1

    def nodes_of_tier(self, tier: int) -> list[str]:
        return [node for node in self.nodes if self.tier_of[node] == tier]

    def children(self, node: str) -> list[str]:
        return list(self._children[node])

    def leaves(self, node: str) -> list[str]:
        """The leaves of ``node``'s subtree in index order (``[node]`` for a leaf)."""
        if self.is_leaf(node):
            return [node]
        return [leaf for child in self.children(node) for leaf in self.leaves(child)]

    def ancestors(self, node: str) -> list[str]:
        """Parent first, root last."""
        chain = []
        parent = self.parent_of[node]
        while parent is not None:
            chain.append(parent)
            parent = self.parent_of[parent]
        return chain

    def pairs(self) -> list[tuple[str, str]]:
        """(child, parent) pairs in the order of a round: post-order, so every subtree
        trains its own pairs before its root pairs with its parent."""
        return list(self._post_order(self.root))

    def _post_order(self, node: str) -> Iterator[tuple[str, str]]:
        for child in self.children(node):
            yield from self._post_order(child)
            yield (child, node)

    def with_parent(self, node: str, new_parent: str) -> "Tree":
        """Returns a tree where ``node`` (and its subtree) hangs under ``new_parent``.

        Raises ValueError unless ``new_parent`` is in the tier directly above ``node``:
        the paper's Theorem 1 allows moves within a tier, never across tiers.
        """
        if self.tier_of[new_parent] != self.tier_of[node] - 1:
            raise ValueError(f"{new_parent} is not in the tier above {node}")
        return Tree(self.tier_names, self.tier_of, {**self.parent_of, node: new_parent})

    def with_leaf(self, leaf: str, parent: str) -> "Tree":
        """Returns a tree where the new leaf ``leaf`` (named ``<leaf tier>-<index>``) hangs
        under ``parent`` of the tier above: an elastic device joining. Raises ValueError
        for a name already in the tree, of another tier, or a parent not above it."""
        tier = len(self.tier_names) - 1
        if leaf in self.tier_of:
            raise ValueError(f"{leaf} is already in the tree")
        if not is_node_of(leaf, self.tier_names[tier]):
            raise ValueError(f"{leaf} is not a name of the leaf tier {self.tier_names[tier]!r}")
        if self.tier_of.get(parent) != tier - 1:
            raise ValueError(f"{parent} is not in the tier above {leaf}")
        return Tree(self.tier_names, {**self.tier_of, leaf: tier}, {**self.parent_of, leaf: parent})

    @classmethod
    def from_parents(cls, tier_names: Sequence[str], parent_of: Mapping[str, Optional[str]]) -> "Tree":
        """The tree of ``parent_of`` (as a checkpoint records it); tiers come from the node
        names. Raises ValueError for a name of no tier."""
        tiers = {name: index for index, name in enumerate(tier_names)}
        tier_of = {}
        for node in parent_of:
            try:
                tier_of[node] = tiers[tier_in_name(node)]
            except (KeyError, ValueError):
                raise ValueError(f"{node} is not a node name of the tiers {list(tier_names)}") from None
        return cls(tuple(tier_names), tier_of, dict(parent_of))


def _node_order(tree: Tree):
    def key(node: str) -> tuple[int, int]:
        return tree.tier_of[node], index_of(node)
    return key


def training_leaves(tree: Tree, dead: frozenset[str], node: str, keep_dead_leaf_samples: bool,
                    left: frozenset[str] = frozenset()) -> list[str]:
    """The leaves whose bridge samples ``node`` trains on: its subtree's, less dead leaves
    when their samples are not kept. Devices that ``left`` (drained, not failed) always
    keep theirs."""
    leaves = tree.leaves(node)
    if keep_dead_leaf_samples:
        return leaves
    return [leaf for leaf in leaves if leaf not in dead or leaf in left]
