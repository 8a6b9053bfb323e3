"""The chaos run's invariants (rayagg/core/invariants.py, benchmarks/chaos.py) on hand-made
trees and rows: each check passes a healthy run and names what a broken one breaks."""
import pytest

from rayagg.core.invariants import (expected_root_leaves, history_problems, metrics_problems, root_sample_problems,
                                    tree_problems)
from rayagg.core.tree import Tree

TIERS = ("cloud", "edge", "device")


@pytest.fixture
def tree():
    return Tree.balanced(TIERS, [1, 2, 4])  # device-0,1 under edge-0; device-2,3 under edge-1


def test_a_balanced_tree_and_a_repaired_one_are_valid(tree):
    assert tree_problems(tree, dead=set()) == []
    moved = tree.with_parent("device-0", "edge-1").with_parent("device-1", "edge-1")
    assert tree_problems(moved, dead={"edge-0"}) == []  # the dead edge's orphans moved


@pytest.mark.parametrize("parent_of, dead, expected", [
    ({"device-0": "edge-0"}, {"edge-0"}, "live device-0 hangs under dead edge-0"),
    ({"device-0": "cloud-0"}, set(), "device-0's parent cloud-0 is not one tier above it"),
    ({"device-0": "edge-9"}, set(), "device-0's parent edge-9 is not in the tree"),
    ({"device-0": None}, set(), "device-0 has no parent"),
    ({"cloud-0": "edge-0"}, set(), "root cloud-0 is missing or has a parent"),
])
def test_a_broken_tree_is_named(tree, parent_of, dead, expected):
    broken = Tree(tree.tier_names, tree.tier_of, {**tree.parent_of, **parent_of})
    assert expected in tree_problems(broken, dead)


def test_the_root_must_hold_every_live_and_kept_leaf(tree):
    sizes = {"device-0": 10, "device-1": 20, "device-2": 30, "device-3": 40}
    kept = expected_root_leaves(tree, dead={"device-1"}, left=set(), keep_dead_leaf_samples=True)
    assert kept == set(sizes)
    assert expected_root_leaves(tree, {"device-1"}, set(), keep_dead_leaf_samples=False) == set(sizes) - {"device-1"}
    assert expected_root_leaves(tree, {"device-3"}, {"device-3"}, keep_dead_leaf_samples=True) == set(sizes) - {"device-3"}

    assert root_sample_problems(4, kept, sizes, held_leaves=set(sizes), held_count=100) == []
    assert root_sample_problems(4, kept, sizes, held_leaves=set(sizes) - {"device-2"}, held_count=70) == [
        "round 4: the root lacks the bridge samples of device-2",
        "round 4: the root holds 70 bridge samples, expected 100"]
    # the driver thinks the root has them all, the root itself counts fewer (a restart that lost some)
    assert root_sample_problems(4, kept, sizes, set(sizes), held_count=60) == [
        "round 4: the root holds 60 bridge samples, expected 100"]


def test_metrics_need_one_row_per_live_node():
    evaluated = {"cloud-0", "edge-0", "device-0", "device-1"}
    assert metrics_problems(3, ["cloud-0", "edge-0", "device-0", "device-1"], evaluated, live=evaluated) == []
    # device-1 died after its evaluation: its row stays; a node dead before it has none
    assert metrics_problems(3, ["cloud-0", "edge-0", "device-0"], evaluated, live=evaluated - {"device-1"}) == []
    assert metrics_problems(3, ["cloud-0", "edge-0", "device-0", "edge-0"], evaluated, live=evaluated) == [
        "round 3: 2 rows for edge-0", "round 3: no metrics row for live device-1"]
    assert metrics_problems(3, [*evaluated, "device-7"], evaluated, live=evaluated) == [
        "round 3: a metrics row for device-7, which the round did not evaluate"]


def test_a_finished_run_has_every_round_once():
    rows = [(r, node) for r in (1, 2, 3) for node in ("cloud-0", "edge-0")]
    assert history_problems(rows, 3) == []
    assert history_problems(rows + [(2, "edge-0")], 3) == ["round 2: 2 rows for edge-0"]
    assert history_problems([row for row in rows if row[0] != 2], 3) == ["no metrics rows for round(s) [2]"]


# ------------------------------------------------------------------ what the chaos run found

class _Runner:
    """What rayagg.loop._checkpoint reads of a runner."""

    def __init__(self, tree):
        self.tree, self.dead, self.left, self.checkpoint, self.bridge_stores = tree, frozenset(), frozenset(), None, []


def _saved(run_dir, round_index, nodes):
    """Each node's checkpoint file of the round, written as a round's save step writes it."""
    from rayagg.files import file_sha256
    from rayagg.rundir.manifest import checkpoint_file, round_directory

    directory = round_directory(run_dir, round_index)
    directory.mkdir(parents=True, exist_ok=True)
    saved = {}
    for node in nodes:
        path = checkpoint_file(directory, node)
        path.write_bytes(f"{node} after round {round_index}".encode())
        saved[node] = file_sha256(path)
    return saved


def test_a_node_dead_after_saving_its_round_is_cut_with_that_file_only(tmp_path):
    """Found by benchmarks/chaos.py: a device that saved its round-2 checkpoint and was
    declared dead before the cut of round 2 committed was listed with both its round-1 and
    its round-2 file; the cut's pruning then deleted round 1's directory, and the manifest
    named a missing file: neither a resume nor `rayagg status` accepted the run again."""
    from rayagg.loop import _checkpoint
    from rayagg.observe import Observers
    from rayagg.rundir.manifest import RunState
    from rayagg.rundir.resume import verify_cut

    tree = Tree.balanced(TIERS, [1, 1, 2])
    runner = _Runner(tree)
    _checkpoint(runner, Observers(), tmp_path, 1, _saved(tmp_path, 1, tree.nodes))
    runner.dead = frozenset({"device-1"})  # its host died after its round-2 save step
    _checkpoint(runner, Observers(), tmp_path, 2, _saved(tmp_path, 2, tree.nodes))

    state = RunState.load(tmp_path)
    verify_cut(state, tmp_path)
    assert state.checkpoints["device-1"] == "checkpoints/round-0002/device-1.pt"
    assert sorted(state.digests) == sorted(state.checkpoints.values())

    # a node dead before the round's save keeps its older file, which the pruning keeps
    runner.dead = frozenset({"device-0", "device-1"})
    _checkpoint(runner, Observers(), tmp_path, 3, _saved(tmp_path, 3, ["cloud-0", "edge-0"]))
    state = RunState.load(tmp_path)
    verify_cut(state, tmp_path)
    assert state.checkpoints["device-0"] == "checkpoints/round-0002/device-0.pt"


@pytest.mark.ray  # imports the runner (and Ray); starts nothing
def test_a_node_restarted_after_saving_its_round_comes_back_from_that_file(tmp_path, tiny_plan):
    """Found by benchmarks/chaos.py: a node whose host died after its round-2 save step
    and was restarted before the loop cut round 2 was restored from round 1 while the cut
    then named its round-2 file: the live run went on from another state than a resume of
    that cut would. It comes back from the round-2 file, before the cut and after."""
    from rayagg.loop import _checkpoint
    from rayagg.observe import Observers
    from rayagg.rundir.manifest import checkpoint_file, round_directory
    from rayagg.runtime.runner import RayRunner, _Saved

    runner = RayRunner(tiny_plan)  # not started: no Ray, only what restores read
    runner.run_dir = tmp_path
    _checkpoint(runner, Observers(), tmp_path, 1, _saved(tmp_path, 1, tiny_plan.tree.nodes))
    assert runner.restore_point("edge-0")[0] == checkpoint_file(round_directory(tmp_path, 1), "edge-0")

    saved = _saved(tmp_path, 2, tiny_plan.tree.nodes)  # round 2 collected, not cut yet
    runner._saved = _Saved(2, round_directory(tmp_path, 2), saved)
    round_2 = (checkpoint_file(round_directory(tmp_path, 2), "edge-0"), saved["edge-0"])
    assert runner.restore_point("edge-0") == round_2
    _checkpoint(runner, Observers(), tmp_path, 2, saved)
    assert runner.restore_point("edge-0") == round_2
