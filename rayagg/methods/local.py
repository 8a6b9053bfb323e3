"""Local training only: the floor every collaborative method should beat."""
from __future__ import annotations

from typing import Iterable, Sequence

from rayagg.core.schedule import TRAIN, Step
from rayagg.core.tree import Tree
from rayagg.methods.base import Method


class LocalOnly(Method):
    """Each live device trains ``kappa1`` epochs a round on its own data, alone: nothing
    crosses a link. Only the devices are evaluated: the nodes above never train."""

    name = "local"

    def round_steps(self, tree: Tree, leaves_of, dead: Iterable[str], live: Sequence[str],
                    save: bool) -> list[Step]:
        steps = [Step(node, TRAIN) for node in live if tree.is_leaf(node)]
        return self.finish(steps, tree, live, save)

    def scored(self, tree: Tree, node: str) -> bool:
        return tree.is_leaf(node)
