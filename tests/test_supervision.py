"""The supervisor's pure decisions, driven by a fake clock (plain floats): no Ray, no torch."""
import copy
import dataclasses

import pytest

from rayagg.core.actions import (DeclareDead, DropLeaf, FailurePolicy, NoSurvivorError, Reason, Rejoin, Reparent,
                                 Restart, describe)
from rayagg.core.supervision import (SupervisorState, dead_after_s, decide, heartbeat, heartbeat_ages, heartbeats,
                                     leave, place, rejoin, report_death, status)
from rayagg.core.tree import Tree
from rayagg.errors import ConfigError, RayaggError
from rayagg.nodes import NodeStatus


# The silence rule alone (no probe): what these tests of the deadline check. Probes are
# tested in tests/test_beats.py.
SILENCE_KILLS = FailurePolicy(probe_timeout_s=0)


def make_state(policy=SILENCE_KILLS, load=None, counts=(1, 3, 9), t=0.0) -> SupervisorState:
    """Supervision starting at ``t`` with every node's heartbeat seen at ``t``."""
    state = SupervisorState.start(Tree.balanced(["cloud", "edge", "device"], counts), t,
                                  policy=policy, load=load)
    return beat_all_but(state, t)


def beat_all_but(state, now, *silent):
    for node in state.tree.nodes:
        if node not in silent:
            state = heartbeat(state, node, now)
    return state


def moves(actions):
    return [(a.node, a.new_parent) for a in actions if isinstance(a, Reparent)]


def declared(actions):
    return [a.node for a in actions if isinstance(a, DeclareDead)]


# ------------------------------------------------------------------ heartbeats and time


@pytest.mark.parametrize("now, dies", [(4.9, False), (5.0, False), (5.1, True)])
def test_late_heartbeat_kills_only_past_the_deadline(now, dies):
    state = beat_all_but(make_state(), now, "edge-1")
    state, actions = decide(state, now)
    if not dies:
        assert actions == [] and state.dead == frozenset()
        return
    first = actions[0]
    assert isinstance(first, DeclareDead) and first.node == "edge-1"
    assert first.reason is Reason.MISSED_HEARTBEATS
    assert first.silent_s == pytest.approx(5.1)
    assert declared(actions) == ["edge-1"] and state.dead == {"edge-1"}


def test_flapping_node_is_never_killed_within_the_deadline():
    state = make_state()
    for late, back in [(4.5, 4.8), (9.5, 9.7), (14.6, 14.65)]:
        state = beat_all_but(state, late, "edge-1")
        state, actions = decide(state, late)
        assert actions == [], f"edge-1 killed at {late} though last seen within 5 s"
        state = heartbeat(state, "edge-1", back)
    state = beat_all_but(state, 19.7, "edge-1")
    state, actions = decide(state, 19.7)  # silent 5.05 s
    assert declared(actions) == ["edge-1"]


def test_heartbeats_from_a_dead_node_are_ignored():
    state = beat_all_but(make_state(), 6.0, "edge-1")
    state, _ = decide(state, 6.0)
    revenant = heartbeat(state, "edge-1", 6.5)
    assert revenant.last_seen["edge-1"] == 0.0 and "edge-1" in revenant.dead
    revenant = beat_all_but(revenant, 7.0)
    _, actions = decide(revenant, 7.0)
    assert actions == []  # declared once, never again, never revived


def test_reported_death_is_immediate_and_reported_is_cleared():
    state = report_death(make_state(), "device-4")
    state, actions = decide(state, 0.1)
    assert actions == [DeclareDead("device-4", Reason.ACTOR_DIED, pytest.approx(0.1)),
                       DropLeaf("device-4", Reason.ACTOR_DIED)]
    assert state.reported == frozenset() and state.dead == {"device-4"}
    assert state.tree.parent_of["device-4"] == "edge-1"  # a dropped leaf keeps its place


def test_never_seen_nodes_count_from_started_at():
    state = SupervisorState.start(Tree.balanced(["cloud", "edge", "device"], [1, 3, 9]), 100.0,
                                  policy=SILENCE_KILLS)
    assert dead_after_s(state, "device-0", 101.0) == pytest.approx(4.0)
    state = beat_all_but(state, 103.0, "device-0")
    _, actions = decide(state, 104.9)
    assert actions == []
    state, actions = decide(state, 105.5)
    assert actions == [DeclareDead("device-0", Reason.MISSED_HEARTBEATS, None),
                       DropLeaf("device-0", Reason.MISSED_HEARTBEATS)]
    assert dead_after_s(state, "device-1", 109.0) == pytest.approx(-1.0)


# ------------------------------------------------------------------ orphans and balancing


@pytest.mark.parametrize("edge0_load, expected", [
    (100, ["edge-2", "edge-2", "edge-0"]),  # 10+50 < 100: the second orphan follows the first
    (55, ["edge-2", "edge-0", "edge-2"]),   # 10+50 >= 55: edge-0 is lighter for the second
])
def test_edge_death_moves_orphans_least_loaded_first(edge0_load, expected):
    load = {"edge-0": edge0_load, "edge-1": 110, "edge-2": 10, "device-3": 50, "device-4": 60}
    state = report_death(make_state(load=load), "edge-1")
    before = state.tree
    state, actions = decide(state, 0.5)
    assert moves(actions) == list(zip(["device-3", "device-4", "device-5"], expected))
    assert all(a.old_parent == "edge-1" and a.reason is Reason.ACTOR_DIED
               for a in actions if isinstance(a, Reparent))
    for edge in ("edge-0", "edge-2"):
        moved = sum(load.get(d, 0) for d, e in zip(["device-3", "device-4", "device-5"], expected)
                    if e == edge)
        assert state.load[edge] == load[edge] + moved
    assert state.load["edge-1"] == 0
    tree = state.tree
    assert tree.children("edge-1") == [] and "edge-1" in tree.nodes
    assert sorted(tree.leaves(tree.root)) == sorted(before.leaves(before.root))
    assert all(tree.parent_of[leaf] not in state.dead for leaf in tree.leaves(tree.root))


def test_the_default_policy_places_least_loaded_first_ties_by_index_not_by_spelling():
    state = make_state(counts=(1, 11, 11))
    assert place(state, "device-5", ["edge-2", "edge-0"]) == "edge-0"
    state = make_state(counts=(1, 11, 11), load={"edge-2": 5, "edge-10": 5})
    assert place(state, "device-5", ["edge-10", "edge-2"]) == "edge-2"
    state = make_state(counts=(1, 11, 11), load={"edge-0": 3})
    assert place(state, "device-5", ["edge-0", "edge-1"]) == "edge-1"
    with pytest.raises(ValueError):
        place(state, "device-5", [])


def test_two_edges_die_in_one_tick_and_the_third_adopts_all():
    state = beat_all_but(make_state(), 5.5, "edge-0", "edge-1")
    state, actions = decide(state, 5.5)
    assert declared(actions) == ["edge-0", "edge-1"]
    assert moves(actions) == [(f"device-{i}", "edge-2") for i in range(6)]
    assert state.tree.children("edge-2") == [f"device-{i}" for i in range(9)]


def test_a_device_dying_with_its_edge_is_moved_then_dropped():
    """Documented choice: the dead device still moves to a live edge, so its samples stay
    accounted for under a live ancestor, and is then dropped from the rounds."""
    state = report_death(report_death(make_state(), "device-4"), "edge-1")
    state, actions = decide(state, 0.2)
    assert [type(a).__name__ for a in actions] == [
        "DeclareDead", "DeclareDead", "Reparent", "Reparent", "Reparent", "DropLeaf"]
    assert declared(actions) == ["edge-1", "device-4"]
    assert actions[-1] == DropLeaf("device-4", Reason.ACTOR_DIED)
    assert state.tree.parent_of["device-4"] in {"edge-0", "edge-2"}
    assert state.dead == {"edge-1", "device-4"}


def test_single_survivor_adopts_and_earlier_dead_are_never_chosen():
    state = report_death(make_state(), "edge-0")
    state, _ = decide(state, 0.1)  # device-0..2 spread over edge-1 and edge-2
    adopted = state.tree.children("edge-1")
    state = report_death(state, "edge-1")
    state, actions = decide(state, 0.2)
    assert moves(actions) == [(device, "edge-2") for device in adopted]
    assert state.tree.children("edge-0") == state.tree.children("edge-1") == []
    assert len(state.tree.children("edge-2")) == 9


def test_no_survivor_raises_naming_node_tier_and_orphans():
    state = beat_all_but(make_state(counts=(1, 2, 4)), 6.0, "edge-0", "edge-1")
    with pytest.raises(NoSurvivorError) as info:
        decide(state, 6.0)
    assert isinstance(info.value, RayaggError)
    assert info.value.node == "edge-0" and info.value.tier == "edge"
    assert info.value.orphans == ("device-0", "device-1")
    assert str(info.value) == "edge-0 died and no edge survives to adopt device-0, device-1"


# ------------------------------------------------------------------ restarts


def test_root_death_restarts_until_exhausted():
    state = make_state(policy=FailurePolicy(max_restarts=2))
    for count, now in [(1, 1.0), (2, 2.0)]:
        state, actions = decide(report_death(state, "cloud-0"), now)
        assert actions[-1] == Restart("cloud-0", count)
        assert state.restarts["cloud-0"] == count and "cloud-0" not in state.dead
        assert state.last_seen["cloud-0"] == now  # a fresh deadline
    with pytest.raises(NoSurvivorError, match="root cloud-0 died and restarts are exhausted"):
        decide(report_death(state, "cloud-0"), 3.0)


def test_a_restarted_node_is_not_timed_out_before_its_first_heartbeat():
    # The runner brings a restarted node back only after its current wait: its silence
    # until then is no death (which would restart it again and again), a report is.
    state, _ = decide(report_death(make_state(), "cloud-0"), 1.0)
    state = beat_all_but(state, 20.0, "cloud-0")
    state, actions = decide(state, 20.0)
    assert actions == [] and "cloud-0" in state.starting
    state = heartbeat(state, "cloud-0", 21.0)
    assert "cloud-0" not in state.starting
    state, actions = decide(beat_all_but(state, 26.5, "cloud-0"), 26.5)
    assert declared(actions) == ["cloud-0"]  # heard from, then silent 5.5 s
    assert "cloud-0" in state.starting  # restarted again: a report still kills it at once
    _, actions = decide(report_death(state, "cloud-0"), 27.0)
    assert declared(actions) == ["cloud-0"]


def test_a_nodes_status_follows_its_lifecycle():
    state = make_state()
    assert status(state, "device-0") == NodeStatus.LIVE
    state, _ = decide(report_death(state, "device-0"), 1.0)
    assert status(state, "device-0") == NodeStatus.DEAD
    state, _ = decide(report_death(state, "cloud-0"), 1.0)
    assert status(state, "cloud-0") == NodeStatus.STARTING  # restarted, not heard from yet
    assert status(heartbeat(state, "cloud-0", 2.0), "cloud-0") == NodeStatus.LIVE
    state, _ = leave(state, "device-1")
    assert status(state, "device-1") == NodeStatus.LEFT
    assert status(state, "device-99") == NodeStatus.UNUSED  # an elastic name that never joined
    assert [s for s in NodeStatus if s.running] == [NodeStatus.STARTING, NodeStatus.LIVE]


def test_root_restart_disabled_raises():
    state = report_death(make_state(policy=FailurePolicy(restart_root=False)), "cloud-0")
    with pytest.raises(NoSurvivorError, match="disabled"):
        decide(state, 1.0)


def test_root_handled_before_edges_in_the_same_tick():
    state = report_death(report_death(make_state(), "edge-2"), "cloud-0")
    _, actions = decide(state, 1.0)
    assert declared(actions) == ["cloud-0", "edge-2"]
    assert actions[2] == Restart("cloud-0", 1) and isinstance(actions[3], Reparent)


def test_a_replaced_edge_keeps_its_children_until_its_restarts_are_spent():
    state = report_death(make_state(policy=FailurePolicy(replace_dead=True, max_restarts=1)), "edge-1")
    state, actions = decide(state, 1.0)
    assert actions == [DeclareDead("edge-1", Reason.ACTOR_DIED, pytest.approx(1.0)), Restart("edge-1", 1)]
    assert "edge-1" not in state.dead and state.tree.children("edge-1") == ["device-3", "device-4", "device-5"]
    state = report_death(state, "edge-1")
    state, actions = decide(state, 2.0)
    assert [type(a) for a in actions] == [DeclareDead, Reparent, Reparent, Reparent]
    assert "edge-1" in state.dead and state.tree.children("edge-1") == []  # cap spent: children move


def test_no_orphan_goes_to_an_edge_replaced_in_the_same_tick():
    state = make_state(policy=FailurePolicy(replace_dead=True, max_restarts=1))
    state = dataclasses.replace(state, restarts={"edge-0": 1})  # edge-0 may not come back
    state = report_death(report_death(state, "edge-0"), "edge-1")
    state, actions = decide(state, 1.0)
    assert moves(actions) == [(f"device-{i}", "edge-2") for i in range(3)]
    assert [a for a in actions if isinstance(a, Restart)] == [Restart("edge-1", 1)]
    assert state.dead == {"edge-0"}


def test_replaced_edge_keeps_its_children_when_no_peer_survives():
    state = make_state(policy=FailurePolicy(replace_dead=True), counts=(1, 1, 3))
    state, actions = decide(report_death(state, "edge-0"), 1.0)
    assert actions[1:] == [Restart("edge-0", 1)]
    assert state.tree.children("edge-0") == ["device-0", "device-1", "device-2"]


# ------------------------------------------------------------------ purity, logs, config


def test_decide_does_not_mutate_its_input():
    load = {"edge-0": 7, "device-3": 2}
    state = report_death(make_state(policy=FailurePolicy(replace_dead=True), load=load), "edge-1")
    state = report_death(state, "cloud-0")
    snapshot = copy.deepcopy(state)
    decide(state, 6.0)
    assert state == snapshot
    assert state.tree.parent_of["device-3"] == "edge-1" and state.reported == {"edge-1", "cloud-0"}


def test_describe_is_one_readable_line():
    assert describe(DeclareDead("edge-1", Reason.MISSED_HEARTBEATS, 5.23)) == \
        "edge-1 declared dead: missed_heartbeats (silent 5.2 s)"
    never = DeclareDead("device-0", Reason.MISSED_HEARTBEATS, None)
    assert describe(never) == "device-0 declared dead: missed_heartbeats (never seen)"
    assert describe(Reparent("device-3", "edge-1", "edge-0", Reason.ACTOR_DIED)) == \
        "device-3 moved edge-1 -> edge-0 (edge-1 died)"
    assert describe(DropLeaf("device-3", Reason.ACTOR_DIED)) == \
        "device-3 dropped from the rounds: actor_died"
    assert describe(Restart("cloud-0", 2)) == "cloud-0 restarted from its checkpoint (restart 2)"


def test_policy_deadline_and_validation():
    assert FailurePolicy(heartbeat_interval_s=0.5, max_missed=4).deadline_s == pytest.approx(2.0)
    for bad in [dict(heartbeat_interval_s=0.0), dict(max_missed=0), dict(max_restarts=-1)]:
        with pytest.raises(ConfigError):
            FailurePolicy(**bad)


def test_unknown_node_death_is_rejected_and_its_heartbeat_ignored():
    with pytest.raises(ValueError, match="edge-9"):
        report_death(make_state(), "edge-9")
    # A host beats for an elastic device it built before the device joined the tree.
    state = heartbeat(make_state(), "device-99", 1.0)
    assert "device-99" not in state.last_seen and "device-99" not in state.tree.tier_of


def kill_device_3(state, now):
    state = report_death(state, "device-3")
    state, _ = decide(state, now)
    return state


def test_a_dead_leaf_rejoins_under_the_least_loaded_live_parent():
    load = {"edge-0": 50, "edge-1": 90, "edge-2": 30, "device-3": 10}
    state = kill_device_3(make_state(load=load), 1.0)
    state, action = rejoin(state, "device-3", now=2.0)
    assert isinstance(action, Rejoin) and (action.old_parent, action.new_parent) == ("edge-1", "edge-2")
    assert state.tree.parent_of["device-3"] == "edge-2" and "device-3" not in state.dead
    assert state.load["edge-2"] == 40 and state.load["edge-1"] == 80
    assert dead_after_s(state, "device-3", 2.0) == pytest.approx(state.policy.deadline_s)
    assert "re-joined under edge-2" in describe(action)


def test_rejoin_spends_restarts_and_refuses_live_nodes():
    state = kill_device_3(make_state(policy=FailurePolicy(max_restarts=1)), 1.0)
    with pytest.raises(ValueError, match="not a dead leaf"):
        rejoin(state, "device-4", now=1.0)
    state, _ = rejoin(state, "device-3", now=2.0)
    state = kill_device_3(state, 3.0)
    with pytest.raises(NoSurvivorError, match="restarts spent"):
        rejoin(state, "device-3", now=4.0)


# ------------------------------------------------------------------ host actors


def beat_hosts(state, now, hosts):
    """One heartbeat per host actor, each covering the nodes it carries."""
    for nodes in hosts:
        state = heartbeats(state, nodes, now)
    return state


# The 1-3-9 tree packed as hosts: edges two to a host, devices four to a host.
HOSTS = {"cloud": ["cloud-0"], "edge-host-0": ["edge-0", "edge-1"], "edge-host-1": ["edge-2"],
         "device-host-0": [f"device-{i}" for i in range(4)],
         "device-host-1": [f"device-{i}" for i in range(4, 8)], "device-host-2": ["device-8"]}


def test_a_silent_host_kills_all_its_nodes_in_one_decision():
    state = beat_hosts(make_state(), 4.0, [n for h, n in HOSTS.items() if h != "device-host-1"])
    state, actions = decide(state, 4.9)
    assert actions == []
    state, actions = decide(state, 5.1)  # device-host-1 silent since 0.0
    assert declared(actions) == ["device-4", "device-5", "device-6", "device-7"]
    assert [a.node for a in actions if isinstance(a, DropLeaf)] == declared(actions)
    assert state.dead == {"device-4", "device-5", "device-6", "device-7"}


def test_a_dead_edge_host_sends_every_orphan_to_a_survivor_on_another_host():
    load = {"edge-0": 30, "edge-1": 30, "edge-2": 30}
    state = beat_hosts(make_state(load=load), 4.0, [n for h, n in HOSTS.items() if h != "edge-host-0"])
    state, actions = decide(state, 5.1)
    assert declared(actions) == ["edge-0", "edge-1"]
    assert moves(actions) == [(f"device-{i}", "edge-2") for i in range(6)]  # never to edge-1
    assert state.tree.children("edge-2") == [f"device-{i}" for i in range(9)]


def test_a_node_that_leaves_its_host_dies_alone():
    # The host's heartbeat stops covering device-1 (it stopped); its siblings live on.
    hosts = {**HOSTS, "device-host-0": ["device-0", "device-2", "device-3"]}
    state = make_state()
    for now in (2.0, 4.0, 6.0):
        state = beat_hosts(state, now, hosts.values())
        state, actions = decide(state, now)
    assert declared(actions) == ["device-1"] and state.dead == {"device-1"}


def test_a_host_beat_covering_a_device_still_joining_records_the_others():
    state = heartbeats(make_state(), ["device-0", "device-99"], 1.0)
    assert state.last_seen["device-0"] == 1.0 and "device-99" not in state.last_seen


def test_heartbeat_ages_count_silence_as_decide_does():
    state = SupervisorState.start(Tree.balanced(["cloud", "edge", "device"], [1, 1, 2]), 100.0)
    state = heartbeats(state, ["cloud-0", "edge-0"], 103.0)
    state = dataclasses.replace(state, dead=frozenset({"device-1"}))
    ages = heartbeat_ages(state, 104.5)
    # device-0 never heard from: silent since the start; device-1 dead: no age
    assert ages == {"cloud-0": 1.5, "edge-0": 1.5, "device-0": 4.5}
    assert heartbeat_ages(dataclasses.replace(state, starting=frozenset({"device-0"})), 104.5).keys() == \
        {"cloud-0", "edge-0"}
