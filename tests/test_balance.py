"""Load balancing as pure code (rayagg/core/balance.py and its use in rayagg/core/supervision.py):
synthetic loads in, moves out. No Ray, no torch, no clock but plain floats."""
import dataclasses
import pathlib

import numpy as np
import pytest

from rayagg.config import BALANCE_POLICIES, BalanceConfig, load_config, parse_config
from rayagg.core.actions import Join, Rebalance, Rejoin, Reparent
from rayagg.core.balance import (BalancingPolicy, LabelBalance, LeastBusy, LeastSamples, Limits, initial_tree,
                                 policy_named)
from rayagg.core.loads import Loads, Move, loads_of, subtree_labels
from rayagg.core.supervision import SupervisorState, decide, join, rebalance, rejoin, report_death
from rayagg.core.tree import Tree
from rayagg.errors import ConfigError

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"
TIERS = ["cloud", "edge", "device"]


# ------------------------------------------------------------------ helpers


def make_loads(per_edge, speed=None, held=None) -> Loads:
    """Loads of edges whose devices are numbered in order: ``per_edge`` maps an edge to its
    devices, each an int (bridge samples) or a tuple of label counts (samples: their sum)."""
    children, samples, labels, index = {}, {}, {}, 0
    for edge, devices in per_edge.items():
        kids = []
        for device in devices:
            node = f"device-{index}"
            index += 1
            kids.append(node)
            if isinstance(device, tuple):
                labels[node] = device
                samples[node] = sum(device)
            else:
                samples[node] = device
        children[edge] = tuple(kids)
    return Loads(children, samples, labels, dict(speed or {}), dict(held or {}))


def random_loads(seed, edges=3, devices=12, classes=4) -> Loads:
    """Devices of random sizes and skewed label mixes thrown on random edges (so the
    edges are uneven), each edge with a random measured speed."""
    rng = np.random.default_rng(seed)
    per_edge = {f"edge-{e}": [] for e in range(edges)}
    for _ in range(devices):
        counts = rng.multinomial(int(rng.integers(5, 100)), rng.dirichlet([0.3] * classes))
        per_edge[f"edge-{int(rng.integers(edges))}"].append(tuple(int(c) for c in counts))
    return make_loads(per_edge, speed={e: float(rng.uniform(0.2, 2.0)) for e in per_edge})


def all_children(loads):
    return [child for kids in loads.children.values() for child in kids]


def applied(loads, moves):
    for move in moves:
        loads = loads.with_move(move)
    return loads


def samples_of(loads):
    return {p: loads.parent_samples(p) for p in loads.parents}


def assignment(loads):
    return frozenset((child, parent) for parent, kids in loads.children.items() for child in kids)


def subtree_load(tree, leaf_samples):
    """Every node's subtree sample total (leaves, edges, root), as the runtime keeps it."""
    return {node: sum(leaf_samples.get(leaf, 0) for leaf in tree.leaves(node)) for node in tree.nodes}


def make_state(counts=(1, 3, 9), samples=10, policy="none", limits=Limits(), cooldown=2, labels=None):
    """Supervision of ``Tree.balanced(TIERS, counts)``; ``samples``: one int for every
    leaf or a mapping leaf -> samples."""
    tree = Tree.balanced(TIERS, counts)
    leaves = tree.nodes_of_tier(len(counts) - 1)
    per_leaf = samples if isinstance(samples, dict) else {leaf: samples for leaf in leaves}
    return SupervisorState.start(tree, 0.0, load=subtree_load(tree, per_leaf), labels=labels,
                                 balancing=policy_named(policy, dataclasses.replace(limits, cooldown=cooldown)))


def check_loads_consistent(state):
    """Every edge's and the root's load is the sum of its leaves' (nothing lost or doubled)."""
    tree = state.tree
    for node in tree.nodes:
        if not tree.is_leaf(node):
            assert state.load[node] == sum(state.load[leaf] for leaf in tree.leaves(node)), node


# ------------------------------------------------------------------ names


def test_every_policy_is_named_and_the_config_offers_the_same_ones():
    for name in BALANCE_POLICIES:
        policy = policy_named(name, Limits(max_moves=5))
        assert policy.name == name and policy.limits.max_moves == 5
    with pytest.raises(ValueError, match="fastest"):
        policy_named("fastest")


def test_limits_defaults_match_the_config_defaults():
    config = BalanceConfig()
    assert Limits() == Limits.of(config) == Limits(config.max_moves, config.threshold, config.min_gain,
                                                   config.cooldown)


# ------------------------------------------------------------------ each policy on synthetic loads


def test_least_samples_evens_the_samples_of_two_edges():
    loads = make_loads({"edge-0": [10, 20, 30, 40, 50], "edge-1": [10]})
    moves = LeastSamples(Limits(max_moves=10, threshold=1.0, min_gain=0.0)).moves(loads, all_children(loads))
    # 160 samples: 80/80 is reachable (edge-0 sheds 70 = 20 + 50 or 30 + 40) and threshold 1.0
    # allows nothing less even; every move is off the heavier edge-0.
    assert samples_of(applied(loads, moves)) == {"edge-0": 80, "edge-1": 80}
    assert all(move.old_parent == "edge-0" for move in moves)


def test_least_samples_evens_the_samples_of_three_edges():
    loads = make_loads({"edge-0": [10] * 6, "edge-1": [], "edge-2": []})
    moves = LeastSamples(Limits(max_moves=10, threshold=1.0, min_gain=0.0)).moves(loads, all_children(loads))
    # 60 samples in 10-sample devices fit exactly 20/20/20, so threshold 1.0 stops only there;
    # edge-0 must shed 4 devices to get from 60 to 20, and 4 moves suffice.
    assert samples_of(applied(loads, moves)) == {"edge-0": 20, "edge-1": 20, "edge-2": 20}
    assert len(moves) == 4 and all(move.old_parent == "edge-0" for move in moves)


def test_round_robin_evens_the_child_counts_whatever_the_samples():
    loads = make_loads({"edge-0": [5, 500, 7, 9, 3], "edge-1": [1]})
    moves = policy_named("round-robin", Limits(max_moves=10, threshold=1.0)).moves(loads, all_children(loads))
    after = applied(loads, moves)
    # 6 children over 2 edges: 3 each, reached by moving 2 off edge-0.
    assert {p: len(kids) for p, kids in after.children.items()} == {"edge-0": 3, "edge-1": 3}
    assert len(moves) == 2


def test_least_busy_moves_devices_from_a_slow_edge_to_fast_ones():
    # Equal samples, but edge-0 takes 2 s per sample and the others 0.5: predicted 60/15/15 s.
    loads = make_loads({"edge-0": [10] * 3, "edge-1": [10] * 3, "edge-2": [10] * 3},
                       speed={"edge-0": 2.0, "edge-1": 0.5, "edge-2": 0.5})
    policy = LeastBusy(Limits(max_moves=2))
    moves = policy.moves(loads, all_children(loads))
    assert moves and all(m.old_parent == "edge-0" and m.new_parent in ("edge-1", "edge-2") for m in moves)
    after = applied(loads, moves)
    assert policy.imbalance(after) < policy.imbalance(loads) == pytest.approx(2.0)  # 60 / 30
    # The samples are even: least-samples sees nothing to do.
    assert LeastSamples(Limits(max_moves=2)).moves(loads, all_children(loads)) == []


@pytest.mark.parametrize("seed", range(8))
def test_least_busy_acts_as_least_samples_before_any_speed_is_measured(seed):
    unmeasured = dataclasses.replace(random_loads(seed), speed={})
    limits = Limits(max_moves=3, threshold=1.05, min_gain=0.01)
    busy, samples = LeastBusy(limits), LeastSamples(limits)
    assert busy.imbalance(unmeasured) == pytest.approx(samples.imbalance(unmeasured))
    everyone = all_children(unmeasured)
    assert busy.moves(unmeasured, everyone) == samples.moves(unmeasured, everyone)
    assert busy.place(unmeasured, "device-99", 40) == samples.place(unmeasured, "device-99", 40)
    # One measured edge: the others are assumed as fast as it, a common factor that
    # changes no decision.
    one = dataclasses.replace(unmeasured, speed={"edge-1": 3.0})
    assert busy.moves(one, all_children(one)) == samples.moves(one, all_children(one))


def test_label_balance_swaps_to_mix_labels_and_keeps_samples_within_threshold():
    # edge-0 sees only class 0, edge-1 only class 1. Moving one device alone would give an
    # edge 30 samples > 1.2 x 20; swapping a class-0 and a class-1 device mixes both.
    loads = make_loads({"edge-0": [(10, 0), (10, 0)], "edge-1": [(0, 10), (0, 10)]})
    policy = LabelBalance(Limits(max_moves=2, threshold=1.2))
    moves = policy.moves(loads, all_children(loads))
    after = applied(loads, moves)
    assert policy.objective(loads) == pytest.approx(20)  # each edge: 20 samples, half misplaced
    assert policy.objective(after) == pytest.approx(0)  # (10, 10) on each edge: the global mix
    assert len(moves) == 2 and {(m.old_parent, m.new_parent) for m in moves} == {
        ("edge-0", "edge-1"), ("edge-1", "edge-0")}
    assert samples_of(after) == {"edge-0": 20, "edge-1": 20}


@pytest.mark.parametrize("seed", range(10))
def test_label_balance_lowers_its_objective_within_the_sample_cap(seed):
    loads = random_loads(seed)
    limits = Limits(max_moves=4, threshold=1.5, min_gain=0.05)
    policy = LabelBalance(limits)
    before = samples_of(loads)
    cap = max(limits.threshold * sum(before.values()) / len(before), *before.values())
    moves = policy.moves(loads, all_children(loads))
    after = applied(loads, moves)
    if moves:  # every step cuts the objective by min_gain of it
        assert policy.objective(after) <= policy.objective(loads) * (1 - limits.min_gain) + 1e-9
    # No edge ends above threshold x mean, or above the largest edge before if that already was.
    assert max(samples_of(after).values()) <= cap
    assert sum(samples_of(after).values()) == sum(before.values())


def test_none_never_moves():
    loads = make_loads({"edge-0": [(50, 0)] * 6, "edge-1": [(0, 1)]}, speed={"edge-0": 9.0, "edge-1": 0.1})
    assert policy_named("none", Limits(max_moves=10, threshold=1.0, min_gain=0.0)).moves(
        loads, all_children(loads)) == []


# ------------------------------------------------------------------ limits


@pytest.mark.parametrize("max_moves", [1, 2, 3])
def test_max_moves_caps_the_moves(max_moves):
    # 60/0/0 in 10-sample devices needs 4 moves to even out: every cap below binds.
    loads = make_loads({"edge-0": [10] * 6, "edge-1": [], "edge-2": []})
    for name in ("least-samples", "least-busy", "round-robin"):
        moves = policy_named(name, Limits(max_moves=max_moves, threshold=1.0, min_gain=0.0)).moves(
            loads, all_children(loads))
        assert len(moves) == max_moves, name


def test_a_label_balance_swap_counts_as_two_moves():
    # Only a swap helps here (see the swap test): a budget of one move allows none.
    loads = make_loads({"edge-0": [(10, 0), (10, 0)], "edge-1": [(0, 10), (0, 10)]})
    assert LabelBalance(Limits(max_moves=1)).moves(loads, all_children(loads)) == []
    assert len(LabelBalance(Limits(max_moves=3)).moves(loads, all_children(loads))) == 2  # then objective 0


def test_no_moves_while_the_imbalance_is_within_threshold():
    loads = make_loads({"edge-0": [10] * 6, "edge-1": [10] * 4})  # 60 / mean 50 = 1.2
    assert LeastSamples(Limits(threshold=1.2, min_gain=0.0)).moves(loads, all_children(loads)) == []
    moves = LeastSamples(Limits(threshold=1.19, min_gain=0.0)).moves(loads, all_children(loads))
    assert samples_of(applied(loads, moves)) == {"edge-0": 50, "edge-1": 50}
    # least-busy judges predicted seconds: equal samples, edge-1 1.5x slower: 30 / mean 25 = 1.2.
    timed = make_loads({"edge-0": [10, 10], "edge-1": [10, 10]}, speed={"edge-0": 1.0, "edge-1": 1.5})
    assert LeastBusy(Limits(threshold=1.2, min_gain=0.0)).moves(timed, all_children(timed)) == []


def test_moves_that_gain_less_than_min_gain_of_the_spread_are_not_made():
    # 31 / 30 / 10 / 10 (mean 20.25): the only move that lowers edge-0 is its 1-sample device
    # to edge-2 (30 / 30 / 11 / 10), after which no move helps. The spread (sum of squared
    # deviations from the mean) falls from 420.75 to 380.75: by 9.5 %.
    loads = make_loads({"edge-0": [30, 1], "edge-1": [30], "edge-2": [10], "edge-3": [10]})
    assert LeastSamples(Limits(threshold=1.0, min_gain=0.09)).spread(loads) == pytest.approx(420.75)
    assert LeastSamples(Limits(threshold=1.0, min_gain=0.09)).moves(loads, all_children(loads)) == [
        Move("device-1", "edge-0", "edge-2")]
    assert LeastSamples(Limits(threshold=1.0, min_gain=0.10)).moves(loads, all_children(loads)) == []


def test_many_small_devices_still_move_though_each_shifts_little_of_an_edges_load():
    # 30 edges of 33 or 34 devices of 40 samples; edge-0 4x slower. One device is 3 % of
    # edge-0's load, under min_gain 5 %, but two moves cut the spread by far more than 5 %.
    per_edge = {f"edge-{e}": [40] * (34 if e < 10 else 33) for e in range(30)}
    loads = dataclasses.replace(make_loads(per_edge), speed={e: 4.0 if e == "edge-0" else 1.0 for e in per_edge})
    moves = LeastBusy(Limits(max_moves=2)).moves(loads, all_children(loads))
    assert len(moves) == 2 and all(m.old_parent == "edge-0" for m in moves)


def test_only_movable_devices_move():
    loads = make_loads({"edge-0": [10] * 6, "edge-1": [], "edge-2": []})
    movable = ["device-4", "device-5"]
    moves = LeastSamples(Limits(max_moves=10, threshold=1.0, min_gain=0.0)).moves(loads, movable)
    assert {m.node for m in moves} == set(movable)  # both help, the other four may not move


# ------------------------------------------------------------------ flapping


@pytest.mark.parametrize("name", BALANCE_POLICIES[1:])
@pytest.mark.parametrize("seed", range(6))
def test_fixed_measurements_reach_a_fixed_point(name, seed):
    """Applying the moves and asking again never revisits an assignment: the even-load
    policies' sorted loads fall with every move, label-balance's objective every step."""
    loads = random_loads(seed)
    policy = policy_named(name, Limits(max_moves=2, threshold=1.05, min_gain=0.01))
    seen = {assignment(loads)}
    for _ in range(60):
        moves = policy.moves(loads, all_children(loads))
        if not moves:
            break
        before = policy.objective(loads) if name == "label-balance" else None
        for move in moves:
            assert loads.parent_of(move.node) == move.old_parent != move.new_parent
            sorted_before = sorted((policy.load(loads, p) for p in loads.parents), reverse=True)
            loads = loads.with_move(move)
            if name != "label-balance":
                assert sorted((policy.load(loads, p) for p in loads.parents), reverse=True) < sorted_before
        if name == "label-balance":
            assert policy.objective(loads) < before
        assert assignment(loads) not in seen, "an assignment came back: a move undid an earlier one"
        seen.add(assignment(loads))
    else:
        pytest.fail(f"{name} still moving after 60 rounds")
    assert policy.moves(loads, all_children(loads)) == []  # and it stays there


def flapping_run(amplitude, rounds=12, cooldown=2, spike_only=False):
    """Two equal edges (4 x 10 samples each, the same true speed) measured with noise that
    alternately favours each: edge-0 busy x (1 + a) in odd rounds and x (1 - a) in even ones,
    edge-1 the opposite (``spike_only``: noise in round 1 only). Returns round -> moves."""
    state = make_state(counts=(1, 2, 8), policy="least-busy", limits=Limits(), cooldown=cooldown)
    history = {}
    for round_index in range(1, rounds + 1):
        a = amplitude if (not spike_only or round_index == 1) else 0.0
        factor = {"edge-0": 1 + a, "edge-1": 1 - a} if round_index % 2 else {"edge-0": 1 - a, "edge-1": 1 + a}
        busy = {edge: state.load[edge] * 1.0 * factor[edge] for edge in ("edge-0", "edge-1")}
        state, actions = rebalance(state, round_index, busy)
        history[round_index] = actions
        check_loads_consistent(state)
    return state, history


def moves_per_device(history):
    rounds = {}
    for round_index, actions in history.items():
        for action in actions:
            rounds.setdefault(action.node, []).append(round_index)
    return rounds


@pytest.mark.parametrize("amplitude", [0.1, 0.15])
def test_noise_within_the_threshold_moves_nothing(amplitude):
    # Predicted max/mean is 1 + a <= 1.2 every round: the threshold absorbs the noise.
    _, history = flapping_run(amplitude)
    assert all(actions == [] for actions in history.values())


def test_a_noise_spike_costs_one_move_and_its_correction_then_nothing():
    # Round 1 sees edge-0 25% slow (max/mean 1.25 > 1.2): one device moves (30/50). The true
    # speeds are equal, so the 50/30 samples then read as 1.25 and one device moves back.
    state, history = flapping_run(0.25, spike_only=True)
    assert sum(len(actions) for actions in history.values()) == 2
    assert state.load["edge-0"] == state.load["edge-1"] == 40
    assert all(actions == [] for round_index, actions in history.items() if round_index > 6)


@pytest.mark.parametrize("cooldown", [1, 2, 3])
def test_the_cooldown_spaces_a_devices_moves_under_noise_above_the_threshold(cooldown):
    state, history = flapping_run(0.25, cooldown=cooldown)
    for device, rounds in moves_per_device(history).items():
        assert all(b - a > cooldown for a, b in zip(rounds, rounds[1:])), (device, rounds)
        assert state.moved_at[device] == rounds[-1]
    assert all(len(actions) <= Limits().max_moves for actions in history.values())


def test_noise_above_the_threshold_does_not_keep_devices_moving():
    # The edges are truly equal, so the right number of moves is 0; one move on the first noisy
    # measurement and one correction are tolerable, devices shuttling every round are not.
    _, history = flapping_run(0.25)
    counts = moves_per_device(history)
    assert sum(len(r) for r in counts.values()) <= 4, history
    assert all(len(r) == 1 for r in counts.values()), counts  # no device goes back where it was


# ------------------------------------------------------------------ the initial tree


UNEQUAL = [100, 90, 80, 10, 10, 10, 10, 10, 10]  # leaf i's samples; the big ones all on edge-0 when contiguous


def test_the_initial_tree_of_none_is_the_configured_one():
    tree = Tree.balanced(TIERS, [1, 3, 9])
    samples = {f"device-{i}": s for i, s in enumerate(UNEQUAL)}
    assert initial_tree(tree, policy_named("none"), samples, {}) is tree


@pytest.mark.parametrize("name", BALANCE_POLICIES[1:])
@pytest.mark.parametrize("counts", [(1, 3, 9), (1, 2, 4, 8), (1, 3, 8)])
def test_the_initial_tree_places_every_leaf_once_under_the_tier_above(name, counts):
    names = ["cloud", "region", "edge", "device"] if len(counts) == 4 else TIERS
    tree = Tree.balanced(names, counts)
    leaves = tree.nodes_of_tier(len(counts) - 1)
    rng = np.random.default_rng(len(counts))
    samples = {leaf: int(rng.integers(5, 200)) for leaf in leaves}
    labels = {leaf: tuple(int(c) for c in rng.multinomial(samples[leaf], [0.25] * 4)) for leaf in leaves}
    placed = initial_tree(tree, policy_named(name), samples, labels)
    assert sorted(placed.leaves(placed.root)) == sorted(leaves)  # each leaf exactly once
    assert len(placed.leaves(placed.root)) == len(leaves)
    assert all(placed.tier_of[placed.parent_of[leaf]] == len(counts) - 2 for leaf in leaves)
    inner = [n for n in tree.nodes if not tree.is_leaf(n)]
    assert {n: placed.parent_of[n] for n in inner} == {n: tree.parent_of[n] for n in inner}
    if name == "round-robin":  # in turn: child counts differ by at most one
        per_parent = [len(placed.children(p)) for p in tree.nodes_of_tier(len(counts) - 2)]
        assert max(per_parent) - min(per_parent) <= 1


def test_least_samples_packs_unequal_shards_better_than_the_contiguous_split():
    tree = Tree.balanced(TIERS, [1, 3, 9])
    samples = {f"device-{i}": s for i, s in enumerate(UNEQUAL)}
    edges = tree.nodes_of_tier(1)

    def max_edge(t):
        return max(sum(samples[leaf] for leaf in t.leaves(edge)) for edge in edges)

    assert max_edge(tree) == 270  # 100 + 90 + 80 all under edge-0
    placed = initial_tree(tree, policy_named("least-samples"), samples, {})
    # Largest first: the three big shards land on separate edges; 330 / 3 = 110 is the ideal.
    assert max_edge(placed) < max_edge(tree) and max_edge(placed) <= 120


def test_label_balance_mixes_labels_the_contiguous_split_keeps_apart():
    # Leaves 0-2 hold class 0, 3-5 class 1, 6-8 class 2: contiguously each edge sees one class.
    tree = Tree.balanced(TIERS, [1, 3, 9])
    labels = {f"device-{i}": tuple(10 if c == i // 3 else 0 for c in range(3)) for i in range(9)}
    samples = {leaf: 10 for leaf in labels}
    policy = policy_named("label-balance", Limits(threshold=1.5))
    placed = initial_tree(tree, policy, samples, labels)

    def objective(t):
        loads = loads_of(t, 1, dead=frozenset(), samples=subtree_load(t, samples), labels=labels)
        return policy.objective(loads)

    assert objective(placed) < objective(tree)


# ------------------------------------------------------------------ supervision: placing


def test_orphans_of_a_dead_edge_avoid_a_measured_slow_edge_under_least_busy():
    def orphans_to(policy):
        state = make_state(policy=policy)
        state = dataclasses.replace(state, speed={"edge-0": 1.0, "edge-1": 1.0, "edge-2": 0.1})
        state, actions = decide(report_death(state, "edge-1"), 0.5)
        check_loads_consistent(state)
        return [a.new_parent for a in actions if isinstance(a, Reparent)]

    # edge-2 is 10x faster: even with all three orphans (60 samples x 0.1 = 6 s) it beats
    # edge-0's 40 s, so least-busy sends them all there.
    assert orphans_to("least-busy") == ["edge-2"] * 3
    # Blind to speed, the default spreads them by samples (30 vs 30: edge-0 first).
    assert "edge-0" in orphans_to("none")


def test_a_dead_device_rejoins_under_a_fast_edge_under_least_busy():
    def rejoined(policy):
        state = make_state(policy=policy)
        state = dataclasses.replace(state, speed={"edge-0": 1.0, "edge-1": 1.0, "edge-2": 0.2})
        state, _ = decide(report_death(state, "device-3"), 0.5)
        state, action = rejoin(state, "device-3", 1.0)
        assert isinstance(action, Rejoin) and action.old_parent == "edge-1"
        check_loads_consistent(state)
        return state, action.new_parent

    # Judged without device-3: edge-1 holds 20, the others 30. Least samples keeps it home;
    # least-busy prefers edge-2: (30 + 10) x 0.2 = 8 s against (20 + 10) x 1.0 = 30 s.
    assert rejoined("none")[1] == "edge-1"
    state, parent = rejoined("least-busy")
    assert parent == "edge-2" and state.load["edge-2"] == 40 and state.load["edge-1"] == 20


def test_a_new_device_joins_where_the_policy_says():
    # Tree 1-2-5: edge-0 holds 3 class-0 devices (30), edge-1 two class-1 devices (20).
    samples = {f"device-{i}": 10 for i in range(5)}
    labels = {f"device-{i}": (10, 0) if i < 3 else (0, 10) for i in range(5)}
    labels["device-5"] = (0, 10)

    def joined(policy, limits=Limits()):
        state = make_state(counts=(1, 2, 5), samples=samples, policy=policy, limits=limits, labels=labels)
        state, action = join(state, "device-5", 10, 1.0)
        assert isinstance(action, Join) and not action.returning
        check_loads_consistent(state)
        return action.parent

    assert joined("none") == "edge-1"  # 20 < 30 samples
    # label-balance: a class-1 device mixes edge-0 (objective 20 against 30); within 1.5 x the
    # mean of 30 both edges fit.
    assert joined("label-balance", Limits(threshold=1.5)) == "edge-0"


def test_round_robin_joins_the_edge_with_fewest_children():
    # Tree 1-3-8: edge-2 has 2 children, but they hold 100 samples each.
    samples = {f"device-{i}": 100 if i >= 6 else 10 for i in range(8)}
    for policy, expected in [("round-robin", "edge-2"), ("none", "edge-0")]:
        state = make_state(counts=(1, 3, 8), samples=samples, policy=policy)
        _, action = join(state, "device-8", 10, 1.0)
        assert action.parent == expected, policy


# ------------------------------------------------------------------ supervision: rebalancing


def test_rebalance_applies_its_moves_to_the_tree_and_the_loads():
    # edge-0's devices hold 40 each (120), the others' 10 (30 per edge); device-0 is dead.
    samples = {f"device-{i}": 40 if i < 3 else 10 for i in range(9)}
    state = make_state(samples=samples, policy="least-samples", limits=Limits(max_moves=2))
    state = dataclasses.replace(state, dead=frozenset({"device-0"}))
    before = state
    state, actions = rebalance(state, 4, {"edge-0": 60.0, "edge-1": 30.0, "edge-2": 30.0})
    assert actions and all(isinstance(a, Rebalance) and a.policy == "least-samples" for a in actions)
    assert state.speed["edge-0"] == pytest.approx(0.5)  # 60 s over 120 samples
    expected = dict(before.load)
    for action in actions:
        assert action.node != "device-0"
        assert before.tree.parent_of[action.node] == action.old_parent == "edge-0"
        assert state.tree.parent_of[action.node] == action.new_parent
        assert state.moved_at[action.node] == 4
        expected[action.old_parent] -= before.load[action.node]
        expected[action.new_parent] += before.load[action.node]
    assert state.load == expected
    assert state.load["cloud-0"] == before.load["cloud-0"]
    assert state.tree.parent_of["device-0"] == "edge-0" and state.load["edge-0"] >= 40  # it keeps its samples
    assert sorted(state.tree.leaves("cloud-0")) == sorted(before.tree.leaves("cloud-0"))
    check_loads_consistent(state)
    # The edges are closer to even than before.
    edges = state.tree.nodes_of_tier(1)
    assert max(state.load[e] for e in edges) < max(before.load[e] for e in edges)


def test_rebalance_does_not_move_a_device_again_within_its_cooldown():
    samples = {f"device-{i}": 40 if i < 3 else 10 for i in range(9)}
    state = make_state(samples=samples, policy="least-samples", limits=Limits(max_moves=1, threshold=1.0),
                       cooldown=2)
    moved = {}
    for round_index in range(1, 9):
        state, actions = rebalance(state, round_index, {})
        for action in actions:
            last = moved.get(action.node)
            assert last is None or round_index - last > 2, (action.node, last, round_index)
            moved[action.node] = round_index
    assert moved  # something moved at all


def test_rebalance_does_nothing_for_a_two_tier_tree():
    tree = Tree.balanced(["cloud", "device"], [1, 4])
    load = subtree_load(tree, {"device-0": 100, "device-1": 1, "device-2": 1, "device-3": 1})
    state = SupervisorState.start(tree, 0.0, load=load, balancing=policy_named("least-samples"))
    new, actions = rebalance(state, 1, {"cloud-0": 5.0})
    assert actions == [] and new.tree == tree and new.load == load


def test_rebalance_under_none_moves_nothing():
    samples = {f"device-{i}": 40 if i < 3 else 10 for i in range(9)}
    state = make_state(samples=samples, policy="none")
    new, actions = rebalance(state, 1, {"edge-0": 500.0, "edge-1": 1.0, "edge-2": 1.0})
    assert actions == [] and new.tree == state.tree and new.load == state.load


def test_loads_of_skips_dead_parents_and_sums_labels_up_the_subtree():
    tree = Tree.balanced(["cloud", "region", "edge", "device"], [1, 2, 4, 8])
    labels = {f"device-{i}": (i, 1) for i in range(8)}
    samples = subtree_load(tree, {leaf: 5 for leaf in labels})
    loads = loads_of(tree, 1, dead=frozenset({"region-1"}), samples=samples, labels=labels)
    assert loads.parents == ["region-0"] and loads.children["region-0"] == ("edge-0", "edge-1")
    assert loads.labels["edge-1"] == (2 + 3, 2)  # devices 2 and 3
    assert subtree_labels(tree, "region-1", labels) == (4 + 5 + 6 + 7, 4)
    assert loads.parent_samples("region-0") == 20


def test_held_samples_of_dead_devices_count_and_follow_moves():
    # edge-0 holds 50 though its live child has 10 (a dead device's 40 stay with it).
    loads = make_loads({"edge-0": [10], "edge-1": [10]}, held={"edge-0": 50, "edge-1": 10})
    assert loads.parent_samples("edge-0") == 50
    after = loads.with_move(Move("device-0", "edge-0", "edge-1"))
    assert samples_of(after) == {"edge-0": 40, "edge-1": 20}
    assert BalancingPolicy().place(loads, "device-9", 5) == "edge-1"


# ------------------------------------------------------------------ config


def tiny():
    return load_config(CONFIGS / "tiny.yaml")  # 1 cloud, edge-0..1, device-0..3


def test_the_balance_section_defaults_to_no_balancing():
    config = tiny()
    assert config.balance == BalanceConfig() and config.balance.policy == "none"
    assert config.emulation.slowdown == {}
    changed = config.with_changes(balance={"policy": "least-busy", "cooldown": 0})
    assert changed.balance.policy == "least-busy" and changed.balance.cooldown == 0


@pytest.mark.parametrize("changes, field", [
    ({"policy": "fastest"}, "balance.policy"),
    ({"threshold": 0.9}, "balance.threshold"),
    ({"min_gain": 1.0}, "balance.min_gain"),
    ({"max_moves": 0}, "balance.max_moves"),
])
def test_bad_balance_settings_are_rejected_naming_the_field(changes, field):
    with pytest.raises(ConfigError) as info:
        parse_config({**tiny().model_dump(), "balance": changes})
    assert field in str(info.value) and repr(next(iter(changes.values()))) in str(info.value)
    with pytest.raises(ConfigError, match=field):
        tiny().with_changes(balance=changes)


def test_slowdown_accepts_tiers_and_nodes_and_a_nodes_own_entry_wins():
    config = tiny().with_changes(emulation={"slowdown": {"edge": 2.0, "edge-1": 4.0, "device-3": 1.0}})
    emulation = config.emulation
    assert emulation.slowdown_of("edge-0") == 2.0 and emulation.slowdown_of("edge-1") == 4.0
    assert emulation.slowdown_of("device-0") == 1.0 and emulation.slowdown_of("cloud-0") == 1.0


@pytest.mark.parametrize("slowdown, message", [
    ({"edge-0": 0.5}, "must be >= 1"),
    ({"edge": 0.0}, "must be >= 1"),
    ({"edge-2": 2.0}, "'edge-2' is neither a tier"),  # tiny has edge-0 and edge-1 only
    ({"device-4": 2.0}, "'device-4' is neither a tier"),  # and device-0 .. device-3
    ({"gpu": 2.0}, "'gpu' is neither a tier"),
    ({"edge-x": 2.0}, "'edge-x' is neither a tier"),
])
def test_a_bad_slowdown_is_rejected(slowdown, message):
    with pytest.raises(ConfigError, match=message) as info:
        tiny().with_changes(emulation={"slowdown": slowdown})
    assert "slowdown" in str(info.value)
    with pytest.raises(ConfigError, match=message):
        parse_config({**tiny().model_dump(), "emulation": {"slowdown": slowdown}})


# ------------------------------------------------------------------ the balance-test table


def test_the_balance_test_table_compares_each_policy_with_none_over_seeds():
    from rayagg.tools.balance_test import PolicyResult, table

    results = [PolicyResult("none", seed, 5, seconds, 1.8, 0, accuracy, "-")
               for seed, seconds, accuracy in [(0, 10.0, 0.70), (1, 12.0, 0.72)]]
    results += [PolicyResult("least-busy", seed, 5, seconds, 1.1, moves, accuracy, "-")
                for seed, seconds, moves, accuracy in [(0, 7.0, 3, 0.71), (1, 8.4, 4, 0.69)]]
    rows = {line.split()[0]: line for line in table(results).splitlines()}
    # Means over the seeds with their ranges; least-busy's 7.7 s against none's 11.0 s is -30%.
    assert rows["none"].split() == ["none", "11.0", "(10.0..12.0)", "+0%", "1.80", "(1.80..1.80)", "0.0",
                                    "71.0", "(70.0..72.0)"]
    assert rows["least-busy"].split()[1:4] == ["7.7", "(7.0..8.4)", "-30%"]
    assert "3.5" in rows["least-busy"].split() and "seeds 0, 1; mean (min..max)" in table(results)


def test_balance_test_names_unknown_policies():
    from rayagg.tools.balance_test import parse_policies

    assert parse_policies("none, least-busy") == ["none", "least-busy"]
    with pytest.raises(ConfigError, match="unknown fastest; choose from none, round-robin"):
        parse_policies("none,fastest")


def test_the_edges_load_is_found_in_rows_of_any_order():
    import random

    from rayagg.rundir.metrics import NodeMetrics, balanced_tier, imbalance, tier_order

    tree = Tree.balanced(["cloud", "edge", "device"], [1, 2, 4])
    busy = {"cloud-0": 9.0, "edge-0": 6.0, "edge-1": 2.0, **{f"device-{i}": 0.1 for i in range(4)}}
    rows = [NodeMetrics(1, n, tree.tier_name(n), 0.5, 1.0, busy[n], 10.0, tree.parent_of[n] or "")
            for n in tree.nodes]
    random.Random(0).shuffle(rows)  # the runtime reports nodes as their calls finish
    assert tier_order(rows) == ["cloud", "edge", "device"]
    assert balanced_tier(tier_order(rows)) == "edge"
    assert imbalance(rows, "edge") == pytest.approx(6.0 / 4.0)  # max 6 over mean 4
