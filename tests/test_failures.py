"""Failures on a real local Ray: an edge replaced and the root restarted (one run), and,
on packed hosts, an edge, a device and a whole device host lost, the devices re-joining.

Each test kills real actors while the tiny tree trains and checks that the run
completes with every bridge sample still held by the root.
"""
import threading
import time
from dataclasses import replace

import pytest
import ray
from conftest import inspected_run, packed

from rayagg.observe import RunObserver
from rayagg.rundir.events import read_events
from rayagg.learning.plan import make_plan
from rayagg.runtime.faults import FaultAt
from rayagg.runtime.runner import RayRunner


pytestmark = pytest.mark.ray


def kill_during_round(runner, node, round_index, delay_s=0.5):
    """Kills the host actor running ``node`` (with every node on it) ``delay_s`` into
    ``round_index``; returns the kill time holder.
    The kill must find the node's calls of the round still in flight: an edge's part of a
    round here ends 2-3 s in (on 2 cores), the root's with the round (about 7 s). "Into a
    round": once it is the oldest round in flight, the one the run waits for
    (runtime.rounds_in_flight lets the next round start earlier)."""
    killed = {}

    def waited_for():
        pending = list(runner.rounds_pending)
        return pending[0] if pending else 0

    def killer():
        while waited_for() < round_index:
            time.sleep(0.05)
        time.sleep(delay_s)
        killed["at"] = time.monotonic()
        ray.kill(runner.actors[node], no_restart=True)

    threading.Thread(target=killer, daemon=True).start()
    return killed


class FaultsInRounds:
    """A fault hook (rayagg/runtime/faults.py): for each ``(node, round, how[, target])``,
    as the first call of that round to ``node`` is submitted, kills the node's host
    (``"kill"``, every node on it) or stops ``target`` (default: the node) alone
    (``"stop"``: its calls submitted after that fail). A call carries a host's batch of
    steps (rayagg/runtime/batching.py), so stopping the node whose call was just submitted
    lets that whole batch run; to fail a node's steps inside a batch, trigger on a call
    submitted to its host (or any host) earlier. The fault lands in its round whatever
    the machine's speed; a timer some seconds into a round found a device's part of it
    done on a fast run, still running on a slow one. Only with one round in flight: then
    the calls of that round are the only ones pending. ``at``: target -> when its fault
    was injected."""

    def __init__(self, *faults):
        self.faults, self.runner, self.at = list(faults), None, {}

    def fault(self, point):
        if point.at != FaultAt.CALL_SUBMITTED or self.runner.rounds_pending:
            return
        for node, round_index, how, *target in self.faults:
            target = target[0] if target else node
            if point.node == node and self.runner.round_index == round_index and target not in self.at:
                self.at[target] = time.monotonic()
                handle = self.runner.actors[target]
                handle.stop_node.remote(target) if how == "stop" else ray.kill(handle, no_restart=True)


class KillWhenCreatedAgain:
    """A fault hook: kills ``node``'s host the first time it is created again mid-run,
    before it answers (its machine lost during the restart)."""

    def __init__(self, node):
        self.node, self.runner, self.killed = node, None, False

    def __call__(self, point):
        host = self.runner.hosts.home[self.node]
        if point.at == FaultAt.HOSTS_CREATED and host in point.hosts and not self.killed:
            self.killed = True
            ray.kill(self.runner.hosts.handles[host], no_restart=True)


@pytest.fixture(scope="module")
def config(tiny_config):
    """Two rounds on half the tiny tree's training samples and a third of its test samples
    (a round takes about 7 s instead of 15: the ResNet-10 cloud learns from every bridge
    sample); the four devices share one host actor (the tests below kill edges and the
    root, whose identity per process is what matters): 4 processes instead of 7."""
    smaller = tiny_config.with_changes(data={"train_samples": 200, "test_samples": 100})
    return packed(smaller, device=4).with_rounds(2)


@pytest.fixture(scope="module")
def plan(config, tiny_dataset):
    return make_plan(config, tiny_dataset)


def total_samples(plan):
    return sum(len(shard) for shard in plan.shards.values())


def test_edge_replaced_then_root_restarted_from_checkpoints(ray_session, config, plan, tmp_path):
    """One run, replace_dead on: edge-0, killed mid-round 2, is restarted in place from its
    round-1 checkpoint and keeps its devices; the root, killed mid-round 3, is restarted
    from its round-2 checkpoint (the root restarts whatever replace_dead says: restart_root,
    tested in tests/test_supervision.py). Every node trains every round. One round in
    flight, so each kill lands in the round it aims at: with two, edge-0 may finish its
    part of round 2 before the kill (batched calls are quick), its death then shows in
    round 3, and the root's kill hits round 3's retry, a second loss the runtime refuses.
    edge-0's host is also lost while it is created again: that is one more death (and
    restart), not the end of the run."""
    config = config.with_changes(training={"rounds": 3}, supervision={"replace_dead": True},
                                 runtime={"rounds_in_flight": 1})
    lost_in_restart = KillWhenCreatedAgain("edge-0")
    runner = lost_in_restart.runner = RayRunner(replace(plan, config=config), faults=lost_in_restart)
    kill_during_round(runner, "edge-0", 2)
    kill_during_round(runner, "cloud-0", 3)
    records, inspected = inspected_run(runner, tmp_path)
    tree, counts = inspected["tree"], inspected["counts"]
    assert inspected["dead"] == frozenset()
    assert tree.children("edge-0") == plan.tree.children("edge-0")
    assert counts["edge-0"] == sum(len(plan.shards[leaf]) for leaf in tree.leaves("edge-0"))
    assert counts[tree.root] == counts["cloud-0"] == total_samples(plan)
    assert sorted({r.round for r in records if r.node == "edge-0"}) == [1, 2, 3]
    assert sorted({r.round for r in records if r.node == "cloud-0"}) == [1, 2, 3]
    events = read_events(tmp_path / "events.parquet")
    assert lost_in_restart.killed
    assert [e.node for e in events if e.kind == "restart"] == ["edge-0", "edge-0", "cloud-0"]
    assert not [e for e in events if e.kind == "restart_fresh"]
    assert not [e for e in events if e.kind == "reparent"]


class StepsSeen(RunObserver):
    """Records (attempt, node, call) of every round step whose answer the driver got."""

    def __init__(self):
        self.attempt, self.seen = 1, []

    def round_submitted(self, round_index, steps, attempt):
        self.attempt = attempt

    def step_finished(self, round_index, node, call, value):
        self.seen.append((self.attempt, node, call))


def test_a_node_that_fails_inside_a_batch_fails_alone(ray_session, config, plan, tmp_path):
    """The four devices share one host, so device-0 (under edge-0) and device-2 (under
    edge-1) learn and answer in one call (rayagg/core/schedule.py's batches). device-2 is
    stopped before that call runs: its steps answer a failure, device-0's succeed in the
    same call, and only device-2 is declared dead; the round is retried without it."""
    config = packed(config, device=4).with_changes(training={"rounds": 1}, runtime={"rounds_in_flight": 1})
    faults = FaultsInRounds(("edge-0", 1, "stop", "device-2"))  # edge-0's first call precedes the devices'
    faults.runner = runner = RayRunner(replace(plan, config=config), faults=faults.fault)
    seen = StepsSeen()
    records, inspected = inspected_run(runner, tmp_path, observers=[seen])
    first = [(node, call) for attempt, node, call in seen.seen if attempt == 1]
    assert ("device-0", "learn") in first and ("device-0", "logits") in first
    assert not [step for step in first if step[0] == "device-2"]
    # edge-1's learn from device-2 took its failed answer; its other learns ran, as all of
    # edge-0's did (the two subtrees have the same shape)
    assert first.count(("edge-1", "learn")) == first.count(("edge-0", "learn")) - 1
    assert inspected["dead"] == {"device-2"}
    events = read_events(tmp_path / "events.parquet")
    assert [e.node for e in events if e.kind == "declare_dead"] == ["device-2"]
    assert [e.detail for e in events if e.kind == "retry"] == ["round 1 retried after losing device-2"]
    assert {r.node for r in records} == set(plan.tree.nodes) - {"device-2"}
    assert inspected["counts"]["cloud-0"] == total_samples(plan)


def test_packed_hosts_lose_an_edge_one_device_and_a_whole_device_host_then_rejoin(
        ray_session, config, plan, tmp_path):
    """Devices two to a host (device-host-0: device-0, 1; device-host-1: device-2, 3),
    edges one to a host, dead devices re-join. Round 1: edge-0 dies; its devices, on a
    shared host, move to edge-1. Round 2: device-1 stops alone before its first call of the
    round; device-0 on the same host carries on. Round 3: device-host-1 dies with both its
    devices. Each round that loses a node is retried without it; each dead device drops
    out (its samples stay with its ancestors) and re-joins at the start of the next round,
    restored from its last checkpoint: device-1 on its own host, device-2 and device-3 on
    a new device-host-1. The root keeps every bridge sample.
    One round in flight: with two, a device's part of round N runs during round N-1 (the
    test above kills with two in flight)."""
    config = packed(config, device=2).with_changes(
        training={"rounds": 4}, supervision={"rejoin_dead_leaves": True}, runtime={"rounds_in_flight": 1})
    # edge-0 dies before any checkpoint: its devices' moves need none
    # device-1 stops as device-0's first call of round 2 (on their host, before device-1's) goes out
    faults = FaultsInRounds(("edge-0", 1, "kill"), ("device-0", 2, "stop", "device-1"), ("device-2", 3, "kill"))
    faults.runner = runner = RayRunner(replace(plan, config=config), faults=faults.fault)
    records, inspected = inspected_run(runner, tmp_path)
    assert inspected["dead"] == {"edge-0"}
    assert inspected["tree"].children("edge-1") == ["device-0", "device-1", "device-2", "device-3"]
    assert inspected["counts"]["cloud-0"] == inspected["counts"]["edge-1"] == total_samples(plan)
    rounds = lambda node: sorted({r.round for r in records if r.node == node})
    assert rounds("device-0") == [1, 2, 3, 4]  # its sibling's departure did not touch it
    assert rounds("device-1") == [1, 3, 4]  # left in round 2, back for round 3
    assert rounds("device-2") == rounds("device-3") == [1, 2, 4]
    assert rounds("cloud-0") == [1, 2, 3, 4]
    hosts = [(a.name, a.state) for a in inspected["actors"] if a.class_name == "NodeHost"]
    assert ("edge-0", "ALIVE") not in hosts and hosts.count(("device-host-0", "ALIVE")) == 1
    assert sorted(state for name, state in hosts if name == "device-host-1") == ["ALIVE", "DEAD"]
    events = read_events(tmp_path / "events.parquet")
    death = next(e for e in events if e.kind == "declare_dead")
    supervision = config.supervision
    assert death.node == "edge-0" and death.round == 1
    assert death.monotonic_s - faults.at["edge-0"] <= supervision.heartbeat_interval_s * supervision.max_missed + 1
    assert {e.node for e in events if e.kind == "reparent"} == {"device-0", "device-1"}
    moved = {"device-1", "device-2", "device-3"}
    assert {e.node for e in events if e.kind == "drop_leaf"} == moved
    assert sorted(e.node for e in events if e.kind == "rejoin") == sorted(moved)
    assert [e.round for e in events if e.node == "device-1" and e.kind in ("declare_dead", "rejoin")] == [2, 3]
    assert [e.detail for e in events if e.kind == "retry"] == [
        f"round {n} retried after losing {lost}" for n, lost in
        [(1, "edge-0"), (2, "device-1"), (3, "device-2, device-3")]]
