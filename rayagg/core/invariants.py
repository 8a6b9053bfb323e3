"""What must hold after every round, however many nodes died: pure checks over data.

A chaos run (benchmarks/chaos.py) kills hosts, machines and the driver at random and,
after every collected round, asks these functions for the run's broken invariants. Each
returns a list of problems (strings naming the node, the round and what is wrong); an
empty list is a pass. They take plain data (a tree, sets of names, counts), so they are
tested without Ray (tests/test_chaos.py) and compute what they expect from the tree
themselves, not from the runtime's own bookkeeping.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping

from rayagg.core.tree import Tree


def tree_problems(tree: Tree, dead: Iterable[str]) -> list[str]:
    """The tree is valid: the root without a parent, every other node's parent in the tree
    and one tier above it (so no cycle, and every node reaches the root), and no live node
    under a dead parent (orphans are re-parented or their parent replaced)."""
    dead = set(dead)
    problems = []
    if tree.parent_of.get(tree.root, "missing") is not None:
        problems.append(f"root {tree.root} is missing or has a parent")
    for node, parent in tree.parent_of.items():
        if node == tree.root:
            continue
        if parent is None:
            problems.append(f"{node} has no parent")
        elif parent not in tree.tier_of:
            problems.append(f"{node}'s parent {parent} is not in the tree")
        elif tree.tier_of[parent] != tree.tier_of[node] - 1:
            problems.append(f"{node}'s parent {parent} is not one tier above it")
        elif node not in dead and parent in dead:
            problems.append(f"live {node} hangs under dead {parent}")
    return problems  # parents one tier up, down from a parentless root: every node reaches it


def expected_root_leaves(tree: Tree, dead: Iterable[str], left: Iterable[str], keep_dead_leaf_samples: bool) -> set[str]:
    """The leaves whose bridge samples the root must hold: every live leaf, and every dead
    one when dead leaves' samples are kept; never a device that left the run."""
    dead, left = set(dead), set(left)
    leaves = {node for node in tree.parent_of if tree.is_leaf(node) and node not in left}
    return leaves if keep_dead_leaf_samples else leaves - dead


def root_sample_problems(round_index: int, expected: Iterable[str], shard_sizes: Mapping[str, int],
                         held_leaves: Iterable[str], held_count: int) -> list[str]:
    """The root holds every bridge sample of every expected leaf: the leaves the driver
    routed to it include them all, and the root itself counts the samples of those leaves
    (``held_count``, asked of the root's host)."""
    expected, held = set(expected), set(held_leaves)
    problems = [f"round {round_index}: the root lacks the bridge samples of {leaf}" for leaf in sorted(expected - held)]
    want = sum(shard_sizes[leaf] for leaf in held | expected)
    if held_count != want:
        problems.append(f"round {round_index}: the root holds {held_count} bridge samples, expected {want}")
    return problems


def metrics_problems(round_index: int, rows: Iterable[str], evaluated: Iterable[str], live: Iterable[str]) -> list[str]:
    """Metrics have one row per live node for the round: ``rows`` (the node of each row)
    name every node the round's last attempt evaluated that is still live (``live``), no
    node twice, and no node the round did not evaluate."""
    counts = Counter(rows)
    evaluated = set(evaluated)
    problems = [f"round {round_index}: {n} rows for {node}" for node, n in sorted(counts.items()) if n > 1]
    problems += [f"round {round_index}: no metrics row for live {node}"
                 for node in sorted(evaluated & set(live) - set(counts))]
    problems += [f"round {round_index}: a metrics row for {node}, which the round did not evaluate"
                 for node in sorted(set(counts) - evaluated)]
    return problems


def history_problems(rows: Iterable[tuple[int, str]], rounds: int) -> list[str]:
    """A finished run's metrics: every round 1..``rounds`` has rows, none twice for a node
    (a round redone after a resume or a retry replaces its rows, it does not add to them)."""
    counts = Counter(rows)
    problems = [f"round {r}: {n} rows for {node}" for (r, node), n in sorted(counts.items()) if n > 1]
    missing = sorted(set(range(1, rounds + 1)) - {r for r, _ in counts})
    if missing:
        problems.append(f"no metrics rows for round(s) {missing}")
    return problems
