"""The round's steps and the critical path through measured steps (pure, no Ray)."""
import pytest

from rayagg.core.schedule import (EVALUATE, LEARN, LOGITS, SAVE, Batch, CallTrace, Step, Timing, batch_steps, critical_path,
                                  match_timings, round_steps)
from rayagg.core.tree import Tree

TREE = Tree.balanced(["cloud", "edge", "device"], [1, 2, 4])  # edge-0: device-0, 1; edge-1: 2, 3


def test_a_pair_is_parent_logits_child_learns_child_logits_parent_learns():
    steps = round_steps(TREE, TREE.leaves)
    first = TREE.pairs()[0]
    child, parent = first
    leaves = tuple(TREE.leaves(child))
    assert steps[:4] == [Step(parent, LOGITS, leaves), Step(child, LEARN, leaves, inputs=(0,)),
                         Step(child, LOGITS, leaves), Step(parent, LEARN, leaves, inputs=(2,))]
    assert len(steps) == 4 * len(TREE.pairs())


def test_dead_nodes_and_empty_subtrees_skip_their_pairs_and_scores_follow_the_pairs():
    leaves_of = lambda node: [] if node == "edge-1" else TREE.leaves(node)
    steps = round_steps(TREE, leaves_of, dead={"device-0"}, scored=["cloud-0", "edge-0"], save=True)
    assert "device-0" not in {step.node for step in steps}
    cloud_pairs = {step.leaves for step in steps if step.node == "cloud-0" and step.call == LOGITS}
    assert cloud_pairs == {tuple(TREE.leaves("edge-0"))}  # edge-1's subtree has no samples
    assert [s.call for s in steps[-4:]] == [EVALUATE, SAVE, EVALUATE, SAVE]
    assert [s.node for s in steps[-4:]] == ["cloud-0", "cloud-0", "edge-0", "edge-0"]
    for index, step in enumerate(steps):
        if step.call == LEARN:
            (source,) = step.inputs
            teacher = steps[source]
            assert teacher.call == LOGITS and teacher.leaves == step.leaves and teacher.node != step.node
            assert source < index


def _timings(steps, seconds):
    return [Timing(seconds(step), seconds(step) / 2) for step in steps]


def test_the_critical_path_of_a_chain_is_its_sum():
    tree = Tree.balanced(["cloud", "device"], [1, 1])
    steps = round_steps(tree, tree.leaves)
    path = critical_path([steps], [_timings(steps, lambda s: 1.0)], host_of=lambda n: n)
    assert path.seconds == 4.0 and path.torch_s == 2.0
    assert path.steps == [(0, 0), (0, 1), (0, 2), (0, 3)]


def test_independent_subtrees_overlap_and_the_slowest_one_sets_the_path():
    # Devices are free; edge-1's steps take 3 s, edge-0's 1 s, the cloud's nothing.
    cost = {"edge-0": 1.0, "edge-1": 3.0}
    steps = round_steps(TREE, TREE.leaves)
    path = critical_path([steps], [_timings(steps, lambda s: cost.get(s.node, 0.0))], host_of=lambda n: n)
    # edge-1: 2 device pairs x (logits + learn) = 12 s, then its cloud pair (child learns and logits) 6 s.
    assert path.seconds == pytest.approx(18.0)
    assert {steps[i].node for _, i in path.steps if cost.get(steps[i].node)} == {"edge-1"}


def test_a_shared_host_serialises_its_nodes():
    cost = {"edge-0": 1.0, "edge-1": 3.0}
    steps = round_steps(TREE, TREE.leaves)
    timings = [_timings(steps, lambda s: cost.get(s.node, 0.0))]
    apart = critical_path([steps], timings, host_of=lambda n: n)
    together = critical_path([steps], timings, host_of=lambda n: "edges" if n.startswith("edge") else n)
    assert together.seconds == pytest.approx(sum(cost.get(s.node, 0.0) for s in steps))
    assert together.seconds > apart.seconds


def test_a_second_round_can_overlap_the_first_up_to_each_hosts_order():
    tree = Tree.balanced(["cloud", "edge", "device"], [1, 1, 1])
    steps = round_steps(tree, tree.leaves)
    timings = _timings(steps, lambda s: 1.0)
    one = critical_path([steps], [timings], host_of=lambda n: n)
    two = critical_path([steps, steps], [timings, timings], host_of=lambda n: n)
    assert one.seconds < two.seconds <= 2 * one.seconds
    assert two.steps[-1][0] == 1


def test_no_rounds_is_a_zero_path_and_a_shape_mismatch_is_an_error():
    assert critical_path([], [], host_of=str).seconds == 0.0
    steps = round_steps(TREE, TREE.leaves)
    with pytest.raises(ValueError, match="timings"):
        critical_path([steps], [[]], host_of=str)


def test_traces_match_steps_node_by_node_in_order():
    steps = round_steps(TREE, TREE.leaves, scored=["cloud-0"])
    traces = {}
    for number, step in enumerate(steps):
        traces.setdefault(step.node, []).append(CallTrace(step.call, float(number), 0.5, 0.5))
    timed = match_timings([steps], traces)
    assert [t.seconds for t in timed[0]] == [float(n) for n in range(len(steps))]


def test_a_trace_that_does_not_fit_is_an_error_naming_the_node():
    steps = round_steps(TREE, TREE.leaves)
    traces = {}
    for step in steps:
        traces.setdefault(step.node, []).append(CallTrace(step.call, 1.0, 1.0, 1.0))
    missing = {**traces, "cloud-0": traces["cloud-0"][:-1]}
    with pytest.raises(ValueError, match="cloud-0"):
        match_timings([steps], missing)
    extra = {**traces, "edge-0": traces["edge-0"] + [CallTrace("evaluate", 1.0, 1.0, 1.0)]}
    with pytest.raises(ValueError, match="edge-0"):
        match_timings([steps], extra)
    swapped = {**traces, "device-0": list(reversed(traces["device-0"]))}
    with pytest.raises(ValueError, match="device-0"):
        match_timings([steps], swapped)


PACKED = {"cloud": "cloud", "edge": "edges", "device": "devices"}  # one host per tier


def packed_host(node):
    return PACKED[node.split("-")[0]]


def test_a_hosts_steps_that_can_start_together_are_one_batch_and_subtrees_interleave():
    steps = round_steps(TREE, TREE.leaves)
    # Post-order: (device-0, edge-0) 0-3, (device-1, edge-0) 4-7, (edge-0, cloud) 8-11,
    # (device-2, edge-1) 12-15, (device-3, edge-1) 16-19, (edge-1, cloud) 20-23.
    assert batch_steps(steps, packed_host) == [
        Batch("edges", (0, 12)), Batch("cloud", (8,)),  # both edges' first logits; the cloud's for edge-0
        Batch("devices", (1, 2, 13, 14)),  # device-0 and device-2 learn, then answer
        Batch("edges", (3, 4, 15, 16)),
        Batch("devices", (5, 6, 17, 18)),
        Batch("edges", (7, 9, 10, 19)),
        Batch("cloud", (11, 20)),
        Batch("edges", (21, 22)),
        Batch("cloud", (23,)),
    ]


@pytest.mark.parametrize("host_of", [packed_host, lambda node: node, lambda node: "one"])
def test_batches_keep_each_nodes_order_and_come_after_their_inputs(host_of):
    steps = round_steps(TREE, TREE.leaves, scored=TREE.nodes, save=True)
    batches = batch_steps(steps, host_of)
    assert sorted(i for batch in batches for i in batch.steps) == list(range(len(steps)))
    position = {i: number for number, batch in enumerate(batches) for i in batch.steps}
    for batch in batches:
        assert {host_of(steps[i].node) for i in batch.steps} == {batch.host}
        assert list(batch.steps) == sorted(batch.steps)
        for i in batch.steps:
            assert all(position[j] < position[i] for j in steps[i].inputs)
    for node in TREE.nodes:
        mine = [i for batch in batches for i in batch.steps if steps[i].node == node]
        assert mine == sorted(mine)


def test_a_batch_starts_once_all_its_inputs_are_answered():
    # h-1 takes g-2's answer (1 s), h-0 g-1's (5 s); batched on host h, h-1 waits for both.
    steps = [Step("g-1", LOGITS), Step("g-2", LOGITS), Step("h-1", LEARN, inputs=(1,)), Step("h-0", LEARN, inputs=(0,))]
    timings = [[Timing(5.0, 5.0), Timing(1.0, 1.0), Timing(1.0, 1.0), Timing(1.0, 1.0)]]
    host_of = lambda node: node if node.startswith("g") else "h"
    batches = batch_steps(steps, host_of)
    assert Batch("h", (2, 3)) in batches
    assert critical_path([steps], timings, host_of).seconds == 6.0  # h-1 at 1-2 s, h-0 at 5-6 s
    batched = critical_path([steps], timings, host_of, [batches])
    assert batched.seconds == 7.0 and batched.steps == [(0, 0), (0, 2), (0, 3)]  # h-1 at 5-6 s, h-0 at 6-7 s
