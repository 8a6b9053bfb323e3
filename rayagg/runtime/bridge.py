"""Where the bridge samples are: which node holds which leaves' samples, and the refs
the driver sends them from. Bookkeeping only: no Ray calls here.

The driver calls ``encode`` on the leaves (or puts the stored copy), so it owns every
bridge sample's object ref. When the tree changes (a subtree re-parented, a node
restarted), :meth:`BridgeRoutes.moves` says which node must receive or drop which
leaves' samples; nothing is asked of a dead node and no sample is lost. Under a method
that carries no bridge samples (rayagg/methods/) nothing is encoded and nothing moves.
"""
from __future__ import annotations

from typing import Any

from rayagg.core.tree import Tree, training_leaves


class BridgeRoutes:
    """The refs of every leaf's bridge samples and what each node holds of them."""

    def __init__(self, keep_dead_leaf_samples: bool, carried: bool = True):
        self.keep_dead_leaf_samples = keep_dead_leaf_samples
        self.carried = carried
        self.refs: dict[str, Any] = {}  # leaf -> ref of its BridgeSamples, owned by the driver
        self.held: dict[str, set[str]] = {}  # node -> leaves whose samples it holds

    def encoded(self, refs: dict[str, Any]) -> None:
        """Leaves encoded: each keeps its own samples (``encode`` does), nobody else any."""
        self.refs = dict(refs)
        self.held = {leaf: {leaf} for leaf in refs}

    def stored(self, refs: dict[str, Any]) -> None:
        """Samples read back from the run's store: no node holds any yet."""
        self.refs, self.held = dict(refs), {}

    def joined(self, refs: dict[str, Any]) -> None:
        """New devices encoded: each keeps its own samples; ``moves`` sends them up."""
        self.refs.update(refs)
        self.held.update({leaf: {leaf} for leaf in refs})

    def forget(self, node: str) -> None:
        """``node`` was built afresh (restart, re-join): it holds nothing."""
        self.held[node] = set()

    def moves(self, tree: Tree, dead: frozenset[str],
              left: frozenset[str] = frozenset()) -> list[tuple[str, list[str], list[str]]]:
        """(node, leaves to add, leaves to drop) for every live node that holds other leaves'
        samples than it trains on, and records the result as held (``refs`` has the refs
        of the leaves to add)."""
        moves = []
        if not self.carried:
            return moves
        for node in tree.nodes:
            if node in dead:
                continue
            wanted = set(training_leaves(tree, dead, node, self.keep_dead_leaf_samples, left))
            held = self.held.get(node, set())
            if wanted != held:
                moves.append((node, sorted(wanted - held), sorted(held - wanted)))
            self.held[node] = wanted
        return moves
