"""One tier of parents as a balancing policy sees it: children, bridge samples, labels
and measured speed per parent (rayagg/core/balance.py decides with them). Pure."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Mapping, Optional, Sequence

import numpy as np

from rayagg.nodes import index_of
from rayagg.core.tree import Tree


def index_key(node: str) -> tuple[int, str]:
    """How policies order nodes and break ties: by index, then name."""
    return index_of(node), node


@dataclass(frozen=True)
class Move:
    """``node`` (with its subtree) moves from ``old_parent`` to ``new_parent``."""

    node: str
    old_parent: str
    new_parent: str


@dataclass(frozen=True)
class Loads:
    """One tier of parents as a policy sees it.

    ``children``: live parent -> its children; ``samples``: child -> bridge samples of
    its subtree; ``labels``: child -> label counts of those samples (one entry per
    class); ``speed``: parent -> measured seconds per bridge sample (may be missing);
    ``held``: parent -> the bridge samples it holds, where known (it may hold more than
    its children's: those of devices that died under it); else its children's sum.
    """

    children: Mapping[str, tuple[str, ...]]
    samples: Mapping[str, int]
    labels: Mapping[str, Sequence[int]] = field(default_factory=dict)
    speed: Mapping[str, float] = field(default_factory=dict)
    held: Mapping[str, int] = field(default_factory=dict)

    @property
    def parents(self) -> list[str]:
        return sorted(self.children, key=index_key)

    def parent_samples(self, parent: str) -> int:
        if parent in self.held:
            return self.held[parent]
        return sum(self.samples.get(child, 0) for child in self.children[parent])

    def parent_labels(self, parent: str) -> np.ndarray:
        total = np.zeros(self._classes, dtype=np.int64)
        for child in self.children[parent]:
            total += self._labels(child)
        return total

    def seconds_per_sample(self, parent: str) -> float:
        """Measured, else the mean of the measured parents, else 1 (nothing measured yet)."""
        if parent in self.speed:
            return self.speed[parent]
        known = [self.speed[p] for p in self.children if p in self.speed]
        return sum(known) / len(known) if known else 1.0

    def with_child(self, child: str, parent: str, samples: int,
                   labels: Optional[Sequence[int]] = None) -> "Loads":
        """``child`` (not yet under any of these parents) hangs under ``parent``."""
        children = {**self.children, parent: tuple(sorted((*self.children[parent], child), key=index_key))}
        new_labels = {**self.labels, child: labels} if labels is not None else self.labels
        return replace(self, children=children, samples={**self.samples, child: samples}, labels=new_labels,
                       held=self._held_plus(parent, samples))

    def without(self, child: str) -> "Loads":
        """``child`` taken out from under its parent (its samples too)."""
        parent = self.parent_of(child)
        children = {**self.children, parent: tuple(c for c in self.children[parent] if c != child)}
        return replace(self, children=children, held=self._held_plus(parent, -self.samples.get(child, 0)))

    def with_move(self, move: Move) -> "Loads":
        moved = self.samples.get(move.node, 0)
        return self.without(move.node).with_child(move.node, move.new_parent, moved, self.labels.get(move.node))

    def _held_plus(self, parent: str, samples: int) -> Mapping[str, int]:
        if parent not in self.held:
            return self.held
        return {**self.held, parent: self.held[parent] + samples}

    def parent_of(self, child: str) -> str:
        """The parent ``child`` hangs under; ValueError if none of these."""
        for parent, kids in self.children.items():
            if child in kids:
                return parent
        raise ValueError(f"{child} hangs under none of {', '.join(self.parents)}")

    @cached_property
    def _classes(self) -> int:
        return max((len(counts) for counts in self.labels.values()), default=1)

    def _labels(self, child: str) -> np.ndarray:
        counts = np.zeros(self._classes, dtype=np.int64)
        given = self.labels.get(child)
        if given is not None:
            counts[:len(given)] = given
        return counts


def loads_of(tree: Tree, tier: int, *, dead: frozenset[str], samples: Mapping[str, int],
             labels: Mapping[str, Sequence[int]], speed: Mapping[str, float] = {}) -> Loads:
    """The live nodes of ``tier`` as parents, with their children (the dead among them
    too: their samples stay with their ancestors); ``samples`` and ``labels`` per node
    (subtree totals; leaves' labels are summed up the subtree here)."""
    children = {p: tuple(tree.children(p)) for p in tree.nodes_of_tier(tier) if p not in dead}
    kids = [c for cs in children.values() for c in cs]
    return Loads(children, {c: samples.get(c, 0) for c in kids},
                 {c: subtree_labels(tree, c, labels) for c in kids}, dict(speed),
                 {p: samples[p] for p in children if p in samples})


def subtree_labels(tree: Tree, node: str, leaf_labels: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    """Label counts of every leaf's bridge samples under ``node``."""
    counts = [np.asarray(leaf_labels[leaf]) for leaf in tree.leaves(node) if leaf in leaf_labels]
    return tuple(int(x) for x in sum(counts)) if counts else ()
