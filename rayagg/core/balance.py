"""Balancing devices across edges: pure policies, loads in, moves out. No Ray, no torch.

In FedAgg a round ends when every edge has trained with each of its devices and then
with the cloud, so the slowest edge subtree sets the round time. Theorem 1 of the
paper lets any device (with its subtree) hang under any node of the tier above, so a
runtime may move devices between rounds to even the edges out.

Every place a node gets a parent asks the run's :class:`BalancingPolicy` (one place for the
choice): the initial tree (:func:`initial_tree`), a device joining, the orphans of a
dead edge and a dead device re-joining (rayagg/core/supervision.py, through
:meth:`BalancingPolicy.place`), and rebalancing between rounds
(:meth:`BalancingPolicy.moves`). The policies:

* ``none``: the tree as configured; a device that needs a parent gets the edge with
  the fewest bridge samples. Never moves a device on its own.
* ``round-robin``: even numbers of children (placement in turn, ties to the lowest
  index).
* ``least-samples``: even numbers of bridge samples.
* ``least-busy``: even predicted seconds: an edge's time is its measured seconds per
  bridge sample (smoothed over rounds) times the samples it holds, so devices move
  from slow edges to fast ones. Before anything is measured it acts as least-samples.
* ``label-balance``: each edge's bridge labels as close to the global label mix as
  it goes (the sum over edges of samples x total-variation distance to the global
  mix), while no edge holds more than ``threshold`` x the mean samples. It moves
  or swaps devices.

Hysteresis (so that devices do not flap between edges on noisy measurements): the
measured speeds are smoothed (half the last round, half the history); the load
policies move only while the predicted max/mean exceeds ``threshold``, and only if the
moves together cut the spread of the loads by ``min_gain`` of it (label-balance: each
step must cut the worst-mixed edge's misfit by ``min_gain`` of it); a device that moved
stays put for ``cooldown`` rounds (the caller passes only the movable devices).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Mapping, Optional, Sequence

import numpy as np

from rayagg.config import BALANCE_POLICIES, BalanceConfig
from rayagg.core.loads import Loads, Move, index_key
from rayagg.core.tree import Tree

_DEFAULTS = BalanceConfig()


@dataclass(frozen=True)
class Limits:
    """The hysteresis of one rebalancing and the cooldown after a move; the defaults are
    ``config.BalanceConfig``'s."""

    max_moves: int = _DEFAULTS.max_moves
    threshold: float = _DEFAULTS.threshold
    min_gain: float = _DEFAULTS.min_gain
    cooldown: int = _DEFAULTS.cooldown  # rounds a device that moved stays put

    @classmethod
    def of(cls, config: BalanceConfig) -> "Limits":
        return cls(config.max_moves, config.threshold, config.min_gain, config.cooldown)


@dataclass(frozen=True)
class BalancingPolicy:
    """``none``: places by fewest bridge samples and never moves a device on its own.

    Subclasses define :meth:`load` (the per-parent quantity they even out) or override
    :meth:`place` and :meth:`moves`. ``limits`` is the hysteresis of a rebalancing.
    """

    limits: Limits = Limits()
    name: ClassVar[str] = "none"

    def load(self, loads: Loads, parent: str) -> float:
        return float(loads.parent_samples(parent))

    def place(self, loads: Loads, child: str, samples: int, labels: Optional[Sequence[int]] = None) -> str:
        """The parent ``child`` (with ``samples`` bridge samples) should hang under: the
        least loaded once it is added; ties go to the lowest index."""
        if not loads.children:
            raise ValueError(f"no live parent to place {child} under")
        return min(loads.parents,
                   key=lambda p: (self.load(loads.with_child(child, p, samples, labels), p), index_key(p)))

    def imbalance(self, loads: Loads) -> float:
        """Max / mean of :meth:`load` over the parents (1.0: even; also when all are 0)."""
        values = [self.load(loads, p) for p in loads.parents]
        mean = sum(values) / len(values) if values else 0.0
        return max(values) / mean if mean > 0 else 1.0

    def moves(self, loads: Loads, movable: Iterable[str]) -> list[Move]:
        """The moves to make now: at most ``limits.max_moves``, of ``movable`` nodes only."""
        return []

    def explain(self, loads: Loads, move: Move) -> str:
        """Why, for the log: e.g. ``edge-0 load 412 -> 190`` (the parent it leaves)."""
        after = loads.with_move(move)
        return f"{move.old_parent} load {self.load(loads, move.old_parent):.3g} -> " \
               f"{self.load(after, move.old_parent):.3g}"


class _EvenLoad(BalancingPolicy):
    """Moves devices off the most loaded parent while the imbalance exceeds the threshold.
    Each move lowers the larger of the two loads it changes, so the sorted loads fall
    every step and, with fixed measurements, nothing can flap. The moves are made only
    if together they cut the spread of the loads (:meth:`spread`) by ``min_gain`` of it:
    judged move by move, a tree of many small devices (one of 33 under an edge moves 3 %
    of its load) could never move at all."""

    def spread(self, loads: Loads) -> float:
        """Sum of squared deviations of the parents' loads from their mean."""
        values = [self.load(loads, p) for p in loads.parents]
        mean = sum(values) / len(values) if values else 0.0
        return sum((value - mean) ** 2 for value in values)

    def moves(self, loads: Loads, movable: Iterable[str]) -> list[Move]:
        movable, moves, start = set(movable), [], loads
        while len(moves) < self.limits.max_moves and self.imbalance(loads) > self.limits.threshold:
            move = self._best_move(loads, movable)
            if move is None:
                break
            moves.append(move)
            movable.discard(move.node)
            loads = loads.with_move(move)
        before = self.spread(start)
        return moves if before - self.spread(loads) >= self.limits.min_gain * before else []

    def _best_move(self, loads: Loads, movable: set[str]) -> Optional[Move]:
        """The move off the heaviest parent that leaves the larger of the two loads it
        changes lowest (ties: the lighter target, then the lowest indices); None unless
        that is below the heaviest load now."""
        heaviest = max(loads.parents, key=lambda p: (self.load(loads, p), -index_key(p)[0]))
        candidates = []
        for child in loads.children[heaviest]:
            if child not in movable:
                continue
            for target in loads.parents:
                if target != heaviest:
                    after = loads.with_move(Move(child, heaviest, target))
                    worst = max(self.load(after, heaviest), self.load(after, target))
                    # Ties go to the target left lightest: piling moves onto one target
                    # would make it the heaviest, its children frozen for this call.
                    candidates.append((worst, self.load(after, target), index_key(child), index_key(target),
                                       Move(child, heaviest, target)))
        if not candidates:
            return None
        worst, *_, move = min(candidates)
        return move if worst < self.load(loads, heaviest) else None


class RoundRobin(_EvenLoad):
    """Even numbers of children."""

    name: ClassVar[str] = "round-robin"

    def load(self, loads: Loads, parent: str) -> float:
        return float(len(loads.children[parent]))


class LeastSamples(_EvenLoad):
    """Even numbers of bridge samples."""

    name: ClassVar[str] = "least-samples"


class LeastBusy(_EvenLoad):
    """Even predicted seconds: measured seconds per bridge sample x samples held."""

    name: ClassVar[str] = "least-busy"

    def load(self, loads: Loads, parent: str) -> float:
        return loads.seconds_per_sample(parent) * loads.parent_samples(parent)


class LabelBalance(BalancingPolicy):
    """Each parent's label mix close to the global one, samples kept within
    ``threshold`` x the mean (placement too)."""

    name: ClassVar[str] = "label-balance"

    def objective(self, loads: Loads) -> float:
        """Sum over parents of samples x total-variation distance of their label mix to the
        global mix: the number of samples that would have to change edges for every edge
        to see the global mix."""
        per_parent = {p: loads.parent_labels(p) for p in loads.parents}
        total = sum(per_parent.values())
        if not np.any(total):
            return 0.0
        mix = total / total.sum()
        return float(sum(_misfit(counts, mix) for counts in per_parent.values()))

    def place(self, loads: Loads, child: str, samples: int, labels: Optional[Sequence[int]] = None) -> str:
        if not loads.children:
            raise ValueError(f"no live parent to place {child} under")
        fitting = self._within(loads, samples, self.limits.threshold)
        if not fitting:
            return super().place(loads, child, samples, labels)
        # Wherever the child goes the global mix becomes the same, so only the chosen
        # parent's misfit changes: compare that change alone (linear in the parents).
        added = loads.with_child(child, fitting[0], samples, labels)
        mix, own = self._mix(added), added._labels(child)
        return min(fitting, key=lambda p: (_misfit(loads.parent_labels(p) + own, mix)
                                           - _misfit(loads.parent_labels(p), mix),
                                           loads.parent_samples(p), index_key(p)))

    def moves(self, loads: Loads, movable: Iterable[str]) -> list[Move]:
        movable, moves = set(movable), []
        while len(moves) < self.limits.max_moves:
            step = self._best_step(loads, movable, self.limits.max_moves - len(moves))
            if not step:
                break
            moves += step
            for move in step:
                movable.discard(move.node)
                loads = loads.with_move(move)
        return moves

    def _best_step(self, loads: Loads, movable: set[str], budget: int) -> list[Move]:
        """The move or swap (two moves) out of the worst-mixed parent that cuts the
        objective most, by at least ``min_gain`` of that parent's misfit (labels are
        counted, not measured: no noise to guard against, only pointless moves), keeping
        samples in bounds.

        Moves leave the global mix as it is, so a step changes only the misfits of the two
        parents it touches: each candidate costs O(classes), not a pass over the tree."""
        mix = self._mix(loads)
        counts = {p: loads.parent_labels(p) for p in loads.parents}
        held = {p: loads.parent_samples(p) for p in loads.parents}
        misfit = {p: _misfit(counts[p], mix) for p in loads.parents}
        before = sum(misfit.values())
        if before == 0:
            return []
        cap = self.limits.threshold * sum(held.values()) / len(held)
        worst = max(loads.parents, key=lambda p: (misfit[p], -index_key(p)[0]))
        best, best_gain = [], max(self.limits.min_gain * misfit[worst], 1e-9)
        for child in loads.children[worst]:
            if child not in movable:
                continue
            for target in loads.parents:
                if target == worst:
                    continue
                steps = [(Move(child, worst, target),)]
                if budget >= 2:
                    steps += [(Move(child, worst, target), Move(other, target, worst))
                              for other in loads.children[target] if other in movable]
                for step in steps:
                    # What leaves `worst` for `target`, net: the child, less what comes back.
                    labels = loads._labels(child) - sum((loads._labels(m.node) for m in step[1:]), 0)
                    samples = loads.samples.get(child, 0) - sum(loads.samples.get(m.node, 0) for m in step[1:])
                    if max(held[worst] - samples, held[target] + samples) > max(cap, held[worst], held[target]):
                        continue
                    gain = misfit[worst] + misfit[target] - _misfit(counts[worst] - labels, mix) \
                        - _misfit(counts[target] + labels, mix)
                    if gain > best_gain:
                        best, best_gain = list(step), gain
        return best

    def explain(self, loads: Loads, move: Move) -> str:
        """E.g. ``edge-2 label distance 0.41 -> 0.28`` (total variation to the global mix)."""
        mix, after = self._mix(loads), loads.with_move(move)
        distance = lambda counts: _misfit(counts, mix) / max(1, counts.sum())
        return f"{move.old_parent} label distance {distance(loads.parent_labels(move.old_parent)):.2f} -> " \
               f"{distance(after.parent_labels(move.old_parent)):.2f}"

    @staticmethod
    def _mix(loads: Loads) -> np.ndarray:
        total = sum(loads.parent_labels(p) for p in loads.parents)
        return total / max(1, total.sum())

    @staticmethod
    def _within(loads: Loads, samples: int, threshold: float) -> list[str]:
        mean = (sum(loads.parent_samples(p) for p in loads.parents) + samples) / len(loads.parents)
        return [p for p in loads.parents if loads.parent_samples(p) + samples <= threshold * mean]


def _misfit(counts: np.ndarray, mix: np.ndarray) -> float:
    """Samples x total-variation distance between ``counts``' mix and ``mix``."""
    n = counts.sum()
    return 0.0 if n == 0 else float(0.5 * np.abs(counts - n * mix).sum())


_POLICIES = {policy.name: policy for policy in (BalancingPolicy, RoundRobin, LeastSamples, LeastBusy, LabelBalance)}


def policy_named(name: str, limits: Limits = Limits()) -> BalancingPolicy:
    """The policy called ``name`` (one of ``config.BALANCE_POLICIES``); ValueError otherwise."""
    try:
        return _POLICIES[name](limits)
    except KeyError:
        raise ValueError(f"unknown balancing policy {name!r}; choose one of {', '.join(BALANCE_POLICIES)}") from None



assert tuple(_POLICIES) == BALANCE_POLICIES, "config.BALANCE_POLICIES names every policy here, in order"


def policy_for(config: BalanceConfig) -> BalancingPolicy:
    """The policy and limits a run's ``balance`` section asks for."""
    return policy_named(config.policy, Limits.of(config))


def initial_tree(tree: Tree, policy: BalancingPolicy, samples: Mapping[str, int],
                 labels: Mapping[str, Sequence[int]]) -> Tree:
    """``tree`` (the configured, evenly counted tree) with its leaves placed by ``policy``:
    unchanged for ``none``; round-robin in index order; the others largest leaf first,
    which packs unequal shards more evenly."""
    if policy.name == "none":
        return tree
    leaf_tier = len(tree.tier_names) - 1
    leaves = tree.nodes_of_tier(leaf_tier)
    if policy.name != "round-robin":
        leaves = sorted(leaves, key=lambda leaf: (-samples[leaf], index_key(leaf)))
    loads = Loads({p: () for p in tree.nodes_of_tier(leaf_tier - 1)}, {})
    parent_of = dict(tree.parent_of)
    for leaf in leaves:
        parent = policy.place(loads, leaf, samples[leaf], labels.get(leaf))
        loads = loads.with_child(leaf, parent, samples[leaf], labels.get(leaf))
        parent_of[leaf] = parent
    return Tree.from_parents(tree.tier_names, parent_of)
