"""HierFAVG (Liu et al., ICC 2020): hierarchical weight averaging on the same tree."""
from __future__ import annotations

from typing import Iterable, Sequence

from rayagg.core.schedule import ADOPT, AVERAGE, SHARE, TRAIN, Step
from rayagg.core.tree import Tree
from rayagg.methods.base import Method


class HierFAVG(Method):
    """A round is one cloud aggregation. ``kappa2`` times: every live device trains
    ``kappa1`` epochs on its own data, then every node between the devices and the root
    averages its children's weights, bottom-up, weighted by the samples under each; but
    the last time, the averages go back down. Then the root averages its children's and
    its average goes down the whole tree, so every node ends the round with the same
    model. Every tier holds the same architecture (the config refuses others).

    A node takes part while it is live and some live device is below it; a subtree cut
    off by a dead node sits the round out until supervision re-parents it.
    """

    name = "hierfavg"
    shares_weights = True

    def round_steps(self, tree: Tree, leaves_of, dead: Iterable[str], live: Sequence[str],
                    save: bool) -> list[Step]:
        active = _active(tree, set(live))
        steps: list[Step] = []
        middle = [parent for parent in _parents_bottom_up(tree) if parent in active and parent != tree.root]
        for aggregation in range(self.config.kappa2):
            steps += [Step(node, TRAIN) for node in tree.nodes if node in active and tree.is_leaf(node)]
            for node in middle:
                _average(steps, tree, node, active)
            if aggregation < self.config.kappa2 - 1:
                for node in reversed(middle):  # top-down
                    _send_down(steps, tree, node, active)
        if tree.root in active:
            _average(steps, tree, tree.root, active)
            for node in [tree.root, *reversed(middle)]:
                _send_down(steps, tree, node, active)
        return self.finish(steps, tree, live, save)


def _active(tree: Tree, live: set[str]) -> set[str]:
    """Live nodes with a live device below them, reached from the root through live nodes."""
    active: set[str] = set()

    def visit(node: str) -> bool:
        if node not in live:
            return False
        below = [visit(child) for child in tree.children(node)]
        if tree.is_leaf(node) or any(below):
            active.add(node)
            return True
        return False

    visit(tree.root)
    return active


def _parents_bottom_up(tree: Tree) -> list[str]:
    """Every node with children, each after all of its descendants (post-order)."""
    order: list[str] = []

    def visit(node: str) -> None:
        children = tree.children(node)
        for child in children:
            visit(child)
        if children:
            order.append(node)

    visit(tree.root)
    return order


def _average(steps: list[Step], tree: Tree, node: str, active: set[str]) -> None:
    """``node`` averages the weights its active children share with it."""
    inputs = []
    for child in tree.children(node):
        if child in active:
            steps.append(Step(child, SHARE))
            inputs.append(len(steps) - 1)
    steps.append(Step(node, AVERAGE, inputs=tuple(inputs)))


def _send_down(steps: list[Step], tree: Tree, node: str, active: set[str]) -> None:
    """``node`` shares its weights with its active children, which adopt them."""
    children = [child for child in tree.children(node) if child in active]
    if not children:
        return
    steps.append(Step(node, SHARE))
    shared = len(steps) - 1
    steps += [Step(child, ADOPT, inputs=(shared,)) for child in children]
