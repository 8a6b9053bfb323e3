"""Tree topology: names, subtrees, the round's pair order, re-parenting rules."""
import pytest

from rayagg.core.tree import Tree


@pytest.fixture
def tree() -> Tree:
    return Tree.balanced(["cloud", "edge", "device"], [1, 3, 9])


def test_names_and_parents(tree):
    assert tree.root == "cloud-0"
    assert tree.children("cloud-0") == ["edge-0", "edge-1", "edge-2"]
    assert tree.children("edge-1") == ["device-3", "device-4", "device-5"]
    assert tree.parent_of["device-8"] == "edge-2"
    assert tree.ancestors("device-4") == ["edge-1", "cloud-0"]


def test_leaves_in_index_order(tree):
    assert tree.leaves("cloud-0") == [f"device-{i}" for i in range(9)]
    assert tree.leaves("device-2") == ["device-2"]


def test_pairs_are_post_order(tree):
    pairs = tree.pairs()
    assert len(pairs) == len(tree.nodes) - 1
    position = {pair: index for index, pair in enumerate(pairs)}
    for child, parent in pairs:
        for grandchild in tree.children(child):
            # a subtree trains its own pairs before its root pairs upward
            assert position[(grandchild, child)] < position[(child, parent)]
    assert pairs[:4] == [("device-0", "edge-0"), ("device-1", "edge-0"),
                         ("device-2", "edge-0"), ("edge-0", "cloud-0")]


def test_with_parent_moves_a_subtree(tree):
    moved = tree.with_parent("device-0", "edge-2")
    assert "device-0" in moved.children("edge-2")
    assert "device-0" not in moved.children("edge-0")
    assert sorted(moved.leaves("cloud-0")) == sorted(tree.leaves("cloud-0"))
    assert tree.parent_of["device-0"] == "edge-0"  # the original is unchanged


def test_with_parent_refuses_another_tier(tree):
    with pytest.raises(ValueError, match="not in the tier above"):
        tree.with_parent("device-0", "cloud-0")
