"""Elastic devices without Ray: the config's range, who joins and leaves (core/membership.py),
the supervisor's join/leave decisions, bridge-sample routes, manifests, plot marks and
the errors of `rayagg scale` for runs that are not live."""
import dataclasses
import json
import os
import pathlib
import socket

import pytest

from rayagg.config import Elastic, load_config
from rayagg.core import packing
from rayagg.core.actions import FailurePolicy, Join, Leave, NoSurvivorError
from rayagg.core.balance import BalancingPolicy
from rayagg.core.events import Event
from rayagg.core.membership import Change, Members, Request, ScaleReply, plan_change, toward
from rayagg.core.supervision import SupervisorState, decide, heartbeat, join, leave, report_death
from rayagg.core.tree import Tree, training_leaves
from rayagg.errors import ConfigError, RunDirError, ScaleError
from rayagg.rundir.directory import check_new_run_dir
from rayagg.rundir.live import write_live
from rayagg.rundir.manifest import RunState
from rayagg.rundir.metrics import NodeMetrics, summary_line
from rayagg.rundir.plot import membership_marks
from rayagg.runtime.bridge import BridgeRoutes

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"


@pytest.fixture(scope="module")
def elastic_config():
    return load_config(CONFIGS / "elastic.yaml")


def with_elastic(config, **elastic):
    tiers = [tier.model_dump() for tier in config.tree.tiers]
    tiers[-1]["elastic"] = {**tiers[-1]["elastic"], **elastic}
    return config.with_changes(tree={"tiers": tiers})


# ------------------------------------------------------------------ config, plan, packing


def test_elastic_yaml_doubles_its_device_tier_and_packs_every_possible_device(elastic_config):
    tree = elastic_config.tree
    assert tree.counts() == [1, 3, 9] and tree.capacities() == [1, 3, 30]
    assert tree.elastic.max_devices >= 2 * tree.counts()[-1]
    devices = [host for host in packing.pack(elastic_config) if host.tier == "device"]
    assert [host.nodes[-1] for host in devices] == ["device-9", "device-19", "device-29"]


@pytest.mark.parametrize("change, message", [
    ({"min_devices": 10}, "count: 9 devices is outside the range"),
    ({"min_devices": 31}, "min_devices 31 > max_devices 30"),
    ({"schedule": [{"round": 3, "devices": 31}]}, "schedule at round 3: 31 devices"),
    ({"schedule": [{"round": 3, "devices": 10}, {"round": 2, "devices": 12}]}, "increase strictly"),
    ({"churn": {"leave": 0.1, "join": 0.2}}, "not both"),
    ({"churn": None, "schedule": [], "max_devices": 30, "bogus": 1}, "unknown key"),
])
def test_a_bad_elastic_range_is_a_config_error_naming_it(elastic_config, change, message):
    with pytest.raises(ConfigError, match=message):
        with_elastic(elastic_config, **change)


def test_only_the_leaf_tier_may_be_elastic_and_every_shard_needs_samples(elastic_config):
    tiers = [tier.model_dump() for tier in elastic_config.tree.tiers]
    tiers[1]["elastic"] = {"min_devices": 1, "max_devices": 6}
    with pytest.raises(ConfigError, match="only the leaf tier may be elastic"):
        elastic_config.with_changes(tree={"tiers": tiers})
    with pytest.raises(ConfigError, match="fewer than 30 leaves"):
        elastic_config.with_changes(data={"train_samples": 200})


def test_the_plan_has_a_shard_for_every_possible_device_and_starts_with_count(tiny_config, tiny_dataset,
                                                                             elastic_config):
    from rayagg.learning.plan import make_plan

    config = elastic_config.with_changes(autoencoder=tiny_config.autoencoder.model_dump(),
                                         data={"train_samples": 600})
    plan = make_plan(config, tiny_dataset)
    assert list(plan.shards) == [f"device-{i}" for i in range(30)]
    assert plan.tree.nodes_of_tier(2) == [f"device-{i}" for i in range(9)]
    assert plan.is_leaf("device-29") and plan.tier("device-29").name == "device"
    assert not plan.is_leaf("edge-2")


# ------------------------------------------------------------------ who joins and leaves


def members(active, away=(), universe=12):
    names = [f"device-{i}" for i in range(universe)]
    active = [f"device-{i}" for i in active]
    away = [f"device-{i}" for i in away]
    return Members(tuple(active), tuple(away), tuple(n for n in names if n not in active + away))


def test_members_of_a_tree_split_active_away_and_unused():
    tree = Tree.balanced(["cloud", "edge", "device"], [1, 2, 4])
    got = Members.of(tree, {"device-1", "edge-0"}, [f"device-{i}" for i in range(6)])
    assert got == Members(("device-0", "device-2", "device-3"), ("device-1",), ("device-4", "device-5"))


def test_joins_take_returning_devices_first_and_leaves_the_highest_index():
    grown = toward(members([0, 1, 2], away=[5, 7]), 6)
    assert grown.joins == ("device-5", "device-7", "device-3") and not grown.leaves
    shrunk = toward(members([0, 1, 2, 9, 10]), 2)
    assert shrunk.leaves == ("device-10", "device-9", "device-2") and not shrunk.joins
    assert not toward(members([0, 1]), 2)


def test_a_request_beats_the_schedule_which_beats_the_standing_target():
    elastic = Elastic(min_devices=2, max_devices=12, schedule=[{"round": 3, "devices": 8}])
    now = members([0, 1, 2, 3])
    asked = plan_change(elastic, now, 3, Request(6, at=0.0))
    assert len(asked.joins) == 2 and asked.target == 6 and "asked for 6" in asked.reason
    scheduled = plan_change(elastic, now, 3, None, target=6)
    assert len(scheduled.joins) == 4 and scheduled.target == 8
    # Two devices died: the standing target brings the tier back, dead ones first.
    healed = plan_change(elastic, members([0, 1], away=[2, 3]), 4, None, target=4)
    assert healed.joins == ("device-2", "device-3") and "target of 4" in healed.reason
    assert plan_change(elastic, now, 4, None, target=4) == Change(target=4)


def test_below_the_minimum_the_tier_is_brought_back_up():
    elastic = Elastic(min_devices=3, max_devices=12)
    change = plan_change(elastic, members([0], away=[1]), 2)
    assert change.joins == ("device-1", "device-2")


def test_churn_is_the_same_for_a_seed_and_stays_in_range():
    elastic = Elastic(min_devices=4, max_devices=12, churn={"leave": 0.5, "join": 0.5, "seed": 7})
    runs = []
    for _ in range(2):
        now, history = members(range(6)), []
        for round_index in range(1, 9):
            change = plan_change(elastic, now, round_index)
            active = [n for n in now.active if n not in change.leaves] + list(change.joins)
            assert 4 <= len(active) <= 12
            names = [f"device-{i}" for i in range(12)]
            away = [n for n in names if n not in active and (n in now.away or n in change.leaves)]
            now = Members(tuple(n for n in names if n in active), tuple(away),
                          tuple(n for n in names if n not in active and n not in away))
            history.append(now.active)
        runs.append(history)
    assert runs[0] == runs[1] and len(set(runs[0])) > 3  # same every time, and it churns
    other = plan_change(Elastic(min_devices=4, max_devices=12, churn={"leave": 0.5, "join": 0.5, "seed": 8}),
                        members(range(6)), 1)
    assert other != plan_change(elastic, members(range(6)), 1)


def test_change_describes_itself():
    change = Change(("device-3",), ("device-9", "device-8"), "schedule")
    assert change.describe(5) == "5 -> 4 devices (1 join, 2 leave): schedule"


# ------------------------------------------------------------------ the supervisor's decisions


def state_with(counts=(1, 2, 4), load=None):
    state = SupervisorState.start(Tree.balanced(["cloud", "edge", "device"], counts), 0.0,
                                  policy=FailurePolicy(), load=load)
    for node in state.tree.nodes:
        state = heartbeat(state, node, 0.0)
    return state


def beat_all_but(state, now, *silent):
    for node in state.tree.nodes:
        if node not in silent:
            state = heartbeat(state, node, now)
    return state


def test_a_new_device_joins_under_the_least_loaded_edge_and_adds_its_load():
    state = state_with(load={"cloud-0": 100, "edge-0": 70, "edge-1": 30})
    state, action = join(state, "device-7", 20, 1.0)
    assert action == Join("device-7", "edge-1", returning=False)
    assert state.tree.parent_of["device-7"] == "edge-1"
    assert state.load["edge-1"] == 50 and state.load["cloud-0"] == 120 and state.load["device-7"] == 20
    assert "device-7" in state.starting  # no timeout before its first heartbeat
    state, actions = decide(beat_all_but(state, 100.0, "device-7"), 100.0)
    assert actions == []


def test_a_device_leaves_and_returns_without_spending_a_restart():
    state, action = leave(state_with(), "device-1")
    assert action == Leave("device-1") and state.dead == state.left == {"device-1"}
    state, actions = decide(beat_all_but(state, 100.0, "device-1"), 100.0)
    assert actions == []  # a device that left is never timed out ...
    state, back = join(state, "device-1", 10, 101.0)  # ... and returns with its name
    assert back.returning and "device-1" not in state.dead | state.left
    assert state.restarts.get("device-1", 0) == 0
    with pytest.raises(ValueError, match="not a leaf that is away"):
        join(state, "device-1", 10, 102.0)
    with pytest.raises(ValueError, match="not a live leaf"):
        leave(state, "edge-0")


def test_nobody_joins_when_no_edge_lives():
    state = dataclasses.replace(state_with(), dead=frozenset({"edge-0", "edge-1"}))
    with pytest.raises(NoSurvivorError, match="no edge is alive"):
        join(state, "device-5", 10, 2.0)


def test_an_edge_dying_in_the_round_its_new_children_joined_hands_them_on():
    state = state_with(load={"edge-0": 10, "edge-1": 50})
    state, _ = join(state, "device-4", 10, 1.0)  # under edge-0, the least loaded
    state, _ = leave(state, "device-0")  # a device that left moves too: its samples need a holder
    state, actions = decide(report_death(state, "edge-0"), 2.0)
    moved = {a.node: a.new_parent for a in actions if a.kind.value == "reparent"}
    assert moved == {"device-0": "edge-1", "device-1": "edge-1", "device-4": "edge-1"}


# ------------------------------------------------------------------ bridge samples


def test_samples_of_a_device_that_left_stay_even_when_dead_ones_are_dropped():
    tree = Tree.balanced(["cloud", "edge", "device"], [1, 2, 4])
    dead = frozenset({"device-0", "device-1"})
    assert training_leaves(tree, dead, "edge-0", False, left=frozenset({"device-0"})) == ["device-0"]


def test_a_joined_device_s_samples_travel_to_its_ancestors():
    tree = Tree.balanced(["cloud", "edge", "device"], [1, 2, 2])
    routes = BridgeRoutes(keep_dead_leaf_samples=True)
    routes.encoded({"device-0": "r0", "device-1": "r1"})
    routes.moves(tree, frozenset())
    routes.joined({"device-5": "r5"})
    grown = tree.with_leaf("device-5", "edge-1")
    assert routes.moves(grown, frozenset()) == [("cloud-0", ["device-5"], []), ("edge-1", ["device-5"], [])]
    assert routes.refs["device-5"] == "r5"


def test_tree_with_leaf_and_from_parents():
    tree = Tree.balanced(["cloud", "edge", "device"], [1, 2, 2])
    grown = tree.with_leaf("device-7", "edge-0")
    assert grown.leaves("edge-0") == ["device-0", "device-7"]
    assert Tree.from_parents(tree.tier_names, grown.parent_of) == grown
    for leaf, parent, message in [("device-0", "edge-0", "already"), ("edge-5", "cloud-0", "not a name"),
                                  ("device-9", "cloud-0", "not in the tier above")]:
        with pytest.raises(ValueError, match=message):
            tree.with_leaf(leaf, parent)


# ------------------------------------------------------------------ run files, plot, summary


def test_a_format_2_manifest_reads_as_one_where_nobody_left(tmp_path):
    RunState(1, {"cloud-0": None}, []).save(tmp_path)
    record = json.loads((tmp_path / "state.json").read_text())
    body = {k: v for k, v in record.items() if k not in ("format", "sha256", "left")}
    from rayagg.files import sha256_bytes
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    record = {"format": 2, **body, "sha256": sha256_bytes(canonical)}
    (tmp_path / "state.json").write_text(json.dumps(record))
    assert RunState.load(tmp_path).left == []


def test_membership_marks_and_the_summary_count_devices():
    events = [Event(0, 0, 2, kind, node, "") for kind, node in
              [("join", "device-9"), ("join", "device-10"), ("leave", "device-3"), ("membership", ""),
               ("leave", "device-4")]]
    events[-1] = Event(0, 0, 4, "leave", "device-4", "")
    assert membership_marks(events) == {2.5: "+2 -1", 4.5: "-1"}
    records = [NodeMetrics(3, n, t, 0.5, 1.0, 0.1, 9.0) for n, t in
               [("cloud-0", "cloud"), ("edge-0", "edge"), ("device-0", "device"), ("device-9", "device")]]
    assert "device  50.0% of 2" in summary_line(3, 6, records, ["cloud", "edge", "device"], "device")


def test_a_live_record_blocks_a_second_run_until_its_process_is_gone(tmp_path):
    (tmp_path / "config.yaml").write_text("name: x\n")
    write_live(tmp_path, "127.0.0.1:1", "ns", os.getpid(), socket.gethostname())
    with pytest.raises(RunDirError, match="a run is training in"):
        check_new_run_dir(tmp_path, overwrite=True)
    write_live(tmp_path, "127.0.0.1:1", "ns", 2**22 + 12345, socket.gethostname())  # no such pid
    check_new_run_dir(tmp_path, overwrite=True)


def test_scale_names_why_a_run_cannot_be_scaled(tmp_path, elastic_config):
    with pytest.raises(ScaleError, match="exactly one"):
        membership_scale(tmp_path, devices=3, add=1)
    with pytest.raises(RunDirError, match="not a rayagg run directory"):
        membership_scale(tmp_path, devices=3)
    (tmp_path / "config.yaml").write_text(elastic_config.with_rounds(2).to_yaml())
    RunState(1, {"cloud-0": None}, []).save(tmp_path)
    with pytest.raises(ScaleError, match=r"not live \(stopped after round 1 of 2\).*--resume"):
        membership_scale(tmp_path, devices=3)
    RunState(2, {"cloud-0": None}, []).save(tmp_path)
    with pytest.raises(ScaleError, match="finished"):
        membership_scale(tmp_path, devices=3)


def membership_scale(run_dir, **request):
    import rayagg

    return rayagg.scale(run_dir, **request)


def test_the_in_process_driver_refuses_a_schedule_it_cannot_follow(tiny_plan, tiny_dataset, elastic_config):
    from dataclasses import replace

    from rayagg.driver import LocalRunner

    with pytest.raises(ConfigError, match="needs the Ray runtime"):
        LocalRunner(replace(tiny_plan, config=elastic_config), tiny_dataset)


# ------------------------------------------------------------------ the supervisor's scale requests


def supervisor(elastic, *, counts=(1, 2, 4), round_index=0):
    """The supervisor actor's class run in this process (no Ray): its methods are async."""
    from rayagg.runtime.supervisor import SupervisorActor

    tree = Tree.balanced(["cloud", "edge", "device"], counts)
    return SupervisorActor.__ray_metadata__.modified_class(tree, FailurePolicy(), BalancingPolicy(), {}, {},
                                                             elastic=elastic, round_index=round_index)


def ask(actor, **request):
    import asyncio

    return asyncio.run(actor.request_scale(**request))


@pytest.mark.ray  # imports the actor's module
def test_scale_requests_are_checked_against_the_range_and_the_rounds_left():
    import asyncio

    actor = supervisor(Elastic(min_devices=2, max_devices=8), round_index=3)
    assert ask(actor, devices=6) == ScaleReply(True, "4 devices active now; 6 from the start of round 4 "
                                                     "(changes wait for a round boundary)")
    assert ask(actor, add=1).message.startswith("4 devices active now; 7 from")  # on the pending 6
    refused = ask(actor, remove=6)
    assert refused == ScaleReply(False, "removing 6 devices from 7 would leave 1; the range is [2, 8]")
    assert ask(actor, add=2).message == "adding 2 devices to 7 would make 9; the range is [2, 8]"
    assert ask(actor, devices=9).message == "asked for 9 devices; the range is [2, 8]"
    taken = asyncio.run(actor.take_request(4, 5))
    assert taken.devices == 7 and asyncio.run(actor.take_request(5, 5)) is None
    assert "last round (5 of 5)" in ask(actor, devices=3).message
    assert "not elastic" in ask(supervisor(None), devices=3).message


@pytest.mark.ray  # imports the actor's module and Ray; starts no Ray
def test_scale_remove_too_many_names_the_devices_asked_and_the_count_left(tmp_path, monkeypatch):
    """`rayagg scale RUN --remove 100` on a run with 9 devices (the supervisor's answer,
    without Ray between): the error says what was asked, not only the count it makes."""
    from rayagg.client import scale as client

    actor = supervisor(Elastic(min_devices=2, max_devices=12), counts=(1, 3, 9), round_index=2)
    (tmp_path / "config.yaml").write_text("name: x\n")
    write_live(tmp_path, "127.0.0.1:1", "ns", os.getpid(), socket.gethostname())
    monkeypatch.setattr(client, "join_by_address", lambda: None)
    monkeypatch.setattr(client, "_supervisor", lambda live, run_dir: actor)
    monkeypatch.setattr(client, "_ask", lambda actor, devices, add, remove, live: ask(actor, devices=devices,
                                                                                      add=add, remove=remove))
    with pytest.raises(ScaleError) as refused:
        membership_scale(tmp_path, remove=100)
    assert str(refused.value) == (f"{tmp_path}: refused: removing 100 devices from 9 would leave -91; "
                                  "the range is [2, 12]")
