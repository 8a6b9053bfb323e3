"""The sequential in-process driver: the whole tree in one process, no Ray.

It runs exactly the steps the Ray runtime submits (the run's method lists them,
rayagg/methods/; FedAgg's are the pairs in post-order, child first within a pair, then
every node's evaluation and, when due, its checkpoint), one at a time, so it is the
reference the runtime is tested and benchmarked against. It is also the quickest way
to try a config on a laptop.
"""
from __future__ import annotations

import pathlib
import time
from collections import Counter
from typing import Any, Optional

import torch

from rayagg.core.membership import Change
from rayagg.core import wire
from rayagg.core.schedule import EVALUATE, SAVE, RoundResult, Scores, Step
from rayagg.core.tree import Tree
from rayagg.errors import ConfigError, TrainingError
from rayagg.learning.data import Dataset
from rayagg.learning.node import NodeState
from rayagg.learning.plan import Plan, build_node, evaluation_split, frozen_autoencoder, local_data, payloads
from rayagg.methods import method_for
from rayagg.observe import Observers
from rayagg.rundir import checkpoint
from rayagg.rundir.manifest import RunState, checkpoint_file


class LocalRunner:
    """Runs every node of ``plan``'s tree as a :class:`NodeState` in this process."""

    def __init__(self, plan: Plan, dataset: Dataset):
        elastic = plan.config.tree.elastic
        if elastic is not None and (elastic.schedule or elastic.churn):
            raise ConfigError("the in-process driver trains a fixed tree: an elastic schedule or "
                              "churn model needs the Ray runtime (drop --local)")
        balance = plan.config.balance
        if balance.rebalances:
            raise ConfigError(f"the in-process driver trains a fixed tree: rebalancing (balance.policy "
                              f"{balance.policy}, every {balance.every}) needs the Ray runtime (drop --local, "
                              "or set balance.every: 0 to keep only the policy's initial placement)")
        self.plan = plan
        self.method = method_for(plan.config.method)
        self._payloads = payloads(plan)
        self._received: dict[str, list[str]] = {}  # node -> leaves whose bridge samples reached it
        self.tree: Tree = plan.tree
        self._dataset = dataset
        self._test = evaluation_split(plan, dataset)
        self.nodes: dict[str, NodeState] = {}
        self.dead: frozenset[str] = frozenset()  # no failures in one process
        self.left: frozenset[str] = frozenset()  # nor devices leaving
        self.observers = Observers()
        self.round_index = 0
        self.checkpoint: Optional[RunState] = None
        self.bridge_stores: list[pathlib.Path] = []  # leaves encode again on resume
        self._done: list[RoundResult] = []  # rounds run, not yet collected

    max_rounds_in_flight = 1  # one process: a round runs whole when submitted
    tree_changing = False

    def connect(self) -> None:
        """Nothing to connect to: everything runs in this process."""

    def start(self, run_dir: Optional[pathlib.Path] = None, resume: Optional[RunState] = None,
              observers: Optional[Observers] = None) -> None:
        """Builds every node (restored from the resumed checkpoint, where it has one); under
        a method that carries bridge samples each leaf encodes once and its samples go to
        every ancestor (counted on the wire of the first round, not of a resume's)."""
        self.observers = observers if observers is not None else Observers()
        frozen = frozen_autoencoder(self.plan)
        self.nodes = {node: build_node(self.plan, node, self._local(node), frozen=frozen)
                      for node in self.tree.nodes}
        if resume is not None:
            self.round_index, self.checkpoint = resume.round, resume
            for node, state in self.nodes.items():
                located = resume.located(node, run_dir)
                if located is not None:
                    state.load_state_dict(checkpoint.load(*located))
        if not self.method.carries_bridge_samples:
            return
        for leaf in self.tree.nodes_of_tier(len(self.tree.tier_names) - 1):
            samples = self.nodes[leaf].encode()
            self.nodes[leaf].add_bridge_samples(samples)
            for holder in self.tree.ancestors(leaf):
                self.nodes[holder].add_bridge_samples(samples)
                if resume is None:
                    self._received.setdefault(holder, []).append(leaf)

    def _local(self, node: str):
        return local_data(self.plan, node, self._dataset) if self.tree.is_leaf(node) else None

    def plan_membership(self, round_index: int) -> Change:
        """The tree stays as the plan made it."""
        return Change()

    def change_membership(self, change: Change) -> None:
        raise ConfigError("the in-process driver cannot change its tree's membership")

    def rebalance(self, round_index: int, busy_s: dict[str, float]) -> None:
        raise ConfigError("the in-process driver does not rebalance (see __init__)")

    @property
    def rounds_pending(self) -> list[int]:
        return [result.round for result in self._done]

    def submit_round(self, round_index: int, checkpoint_dir: Optional[pathlib.Path] = None) -> None:
        """Runs the round's steps (rayagg/methods/) one after another; with
        ``checkpoint_dir`` each node checkpoints right after its evaluation.
        :meth:`collect_round` returns the result. TrainingError (a diverged node) names
        the round too."""
        started = time.perf_counter()
        self.round_index = round_index
        steps = self.method.round_steps(self.tree, self.tree.leaves, (), self.tree.nodes,
                                        save=checkpoint_dir is not None)
        self.observers.round_submitted(round_index, steps, 1)
        moved = wire.merge(wire.step_bytes(steps, self.tree.parent_of, self._payloads.answer_bytes),
                           self._bridge_sent())
        answers: dict[int, Any] = {}
        takers = Counter(index for step in steps for index in step.inputs)  # frees each answer after its last use
        values: dict[tuple[str, str], Any] = {}
        try:
            for index, step in enumerate(steps):
                value = self._run(step, [answers[i] for i in step.inputs], checkpoint_dir)
                for i in step.inputs:
                    takers[i] -= 1
                    if not takers[i]:
                        del answers[i]
                if takers[index]:
                    answers[index] = value
                if step.call in (EVALUATE, SAVE):
                    values[step.node, step.call] = value
                self.observers.step_finished(round_index, step.node, step.call, value)
        except TrainingError as exc:
            raise TrainingError(f"round {round_index}: {exc}") from exc
        by_call = lambda call: {node: v for (node, name), v in values.items() if name == call}
        saved = by_call(SAVE) if checkpoint_dir is not None else None
        self._done.append(RoundResult(round_index, by_call(EVALUATE), saved, time.perf_counter() - started, moved))

    def _bridge_sent(self) -> dict[str, wire.Link]:
        """The bridge samples that went up the tree since the last round, link by link."""
        per_sample = wire.bridge_sample_bytes(self.plan.image_shape)
        sent = wire.bridge_bytes(self._received, self.tree.parent_of,
                                 lambda leaf: per_sample * self.plan.shard_sizes[leaf])
        self._received = {}
        return sent

    def _run(self, step: Step, inputs: list, checkpoint_dir: Optional[pathlib.Path]) -> Any:
        """What ``step``'s node answers: its method of the step's name, given the step's
        leaves (if any) and the answers it takes."""
        node = self.nodes[step.node]
        if step.call == EVALUATE:
            return Scores(*node.evaluate(*self._test), node.take_work_s())
        if step.call == SAVE:
            return checkpoint.save(node.state_dict(), checkpoint_file(checkpoint_dir, step.node))
        leaves = [list(step.leaves)] if step.leaves else []
        return getattr(node, step.call)(*leaves, *inputs)

    def collect_round(self) -> RoundResult:
        return self._done.pop(0)

    def save_checkpoints(self, directory: pathlib.Path) -> dict[str, str]:
        """Writes every node's checkpoint to ``directory``; returns node -> SHA-256."""
        return {node: checkpoint.save(state.state_dict(), checkpoint_file(directory, node))
                for node, state in self.nodes.items()}

    def close(self) -> None:
        self.nodes = {}
