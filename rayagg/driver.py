"""The sequential in-process driver: the whole tree in one process, no Ray.

It runs exactly the schedule the Ray runtime runs (``Tree.pairs``, child first within
a pair), one pair at a time, so it is the reference the runtime is tested and
benchmarked against. It is also the quickest way to try a config on a laptop.
"""
from __future__ import annotations

import pathlib
from typing import Optional

from rayagg import checkpoint
from rayagg.data import Dataset
from rayagg.events import Event
from rayagg.node import NodeState
from rayagg.plan import Plan, build_node, evaluation_split
from rayagg.run import RunState
from rayagg.tree import Tree


class LocalRunner:
    """Runs every node of ``plan``'s tree as a :class:`NodeState` in this process."""

    def __init__(self, plan: Plan, dataset: Dataset):
        self.plan = plan
        self.tree: Tree = plan.tree
        self._dataset = dataset
        self._test = evaluation_split(plan, dataset)
        self.nodes: dict[str, NodeState] = {}
        self.dead: frozenset[str] = frozenset()  # no failures in one process
        self.events: list[Event] = []
        self.round_index = 0

    def start(self, run_dir: Optional[pathlib.Path] = None, resume: Optional[RunState] = None) -> None:
        """Builds every node (restored from RUN_DIR's checkpoints when resuming); each leaf
        encodes once and its bridge samples go to every ancestor."""
        self.nodes = {node: build_node(self.plan, node, self._dataset) for node in self.tree.nodes}
        if resume is not None:
            self.round_index = resume.round
            for node, state in self.nodes.items():
                state.load_state_dict(checkpoint.load(run_dir / "checkpoints" / f"{node}.pt"))
        for leaf in self.tree.nodes_of_tier(len(self.tree.tier_names) - 1):
            samples = self.nodes[leaf].encode()
            for holder in [leaf, *self.tree.ancestors(leaf)]:
                self.nodes[holder].add_bridge_samples(samples)

    def train_round(self) -> None:
        self.round_index += 1
        for child, parent in self.tree.pairs():
            leaves = self.tree.leaves(child)
            self.nodes[child].learn(leaves, self.nodes[parent].logits(leaves))
            self.nodes[parent].learn(leaves, self.nodes[child].logits(leaves))

    def evaluate(self) -> dict[str, tuple[float, float, float]]:
        """Returns node -> (accuracy, loss, seconds of training work this round)."""
        images, labels = self._test
        return {node: (*state.evaluate(images, labels), state.take_work_s())
                for node, state in self.nodes.items()}

    def bridge_sample_counts(self) -> dict[str, int]:
        return {node: state.bridge_sample_count for node, state in self.nodes.items()}

    def save_checkpoints(self, directory: pathlib.Path) -> None:
        for node, state in self.nodes.items():
            checkpoint.save(state.state_dict(), directory / f"{node}.pt")

    def close(self) -> None:
        self.nodes = {}

