"""FedAgg (the default): bidirectional distillation on bridge samples, pair by pair."""
from __future__ import annotations

from typing import Iterable, Sequence

from rayagg.core.schedule import Step, round_steps
from rayagg.core.tree import Tree
from rayagg.methods.base import Method


class FedAgg(Method):
    """Every live (child, parent) pair whose child's subtree has bridge samples exchanges
    logits both ways, child first, in post-order (rayagg/core/schedule.py
    ``round_steps``); every live node is evaluated."""

    name = "fedagg"
    carries_bridge_samples = True

    def round_steps(self, tree: Tree, leaves_of, dead: Iterable[str], live: Sequence[str],
                    save: bool) -> list[Step]:
        return round_steps(tree, leaves_of, dead, scored=live, save=save)
