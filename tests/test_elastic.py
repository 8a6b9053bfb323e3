"""Elastic devices on a real local Ray: one run of jobs/configs/elastic.yaml, made small,
that grows by its schedule, shrinks and grows again by live requests (the CLI and the
Python API), and meets a fault at every step of the way.

Devices are packed four to a host (device-host-0: device-0..3, device-host-1:
device-4..7). Before round 2 the schedule asks for 6 devices: device-3 joins, while
device-host-1 is killed as device-4 and device-5 encode (they die while joining and stay
out). Before round 3 the standing target brings them in on a new device-host-1. In round
3 the edge that adopted device-4 dies, and a scale request to 3 arrives while that
failure is being recovered. Before round 4 device-5, 4 and 3 leave (drained: a cut of
round 3 is written although checkpoints are due every 2 rounds), which empties
device-host-1. Before round 5 `rayagg scale --add 2` brings device-3 and device-4 back
with the models they left with. The root holds every bridge sample throughout.
"""
import pathlib
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import ray
from click.testing import CliRunner
from conftest import inspected_run

import rayagg
from rayagg.cli import main
from rayagg.config import load_config
from rayagg.core.events import EventKind
from rayagg.errors import ScaleError
from rayagg.learning.plan import make_plan
from rayagg.nodes import index_of
from rayagg.observe import RunObserver
from rayagg.rundir import store
from rayagg.rundir.events import read_events
from rayagg.rundir.live import LIVE_FILE
from rayagg.rundir.manifest import RunState
from rayagg.rundir.resume import expected_bridge_counts, load_for_resume
from rayagg.runtime.faults import FaultAt
from rayagg.runtime.runner import RayRunner

pytestmark = pytest.mark.ray


CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"


@pytest.fixture(scope="module")
def config(tiny_config):
    """elastic.yaml made small: CNNs, 2 edges, 3 to 8 devices (2 to 8 allowed) on 240
    samples, 5 rounds, checkpoints every 2 rounds; the tests' autoencoder cache."""
    raw = load_config(CONFIGS / "elastic.yaml").model_dump()
    cloud, edge, device = raw["tree"]["tiers"]
    cloud.update(model="cnn", resources={"num_cpus": 0.5})
    edge.update(count=2)
    device.update(count=3, nodes_per_actor=4, resources={"num_cpus": 0.05},
                  elastic={"min_devices": 2, "max_devices": 8, "schedule": [{"round": 2, "devices": 6}]})
    config = load_config(CONFIGS / "elastic.yaml").with_changes(
        data={"train_samples": 240, "test_samples": 100}, training={"rounds": 5},
        supervision={"checkpoint_every": 2}, tree={"tiers": [cloud, edge, device]},
        autoencoder=tiny_config.autoencoder.model_dump())
    return config


class Churn(RunObserver):
    """Injects the faults and requests of the module docstring at fixed points: kills
    through the fault hook (a host mid-join, an edge as round 3 goes out) and requests
    from observer calls (during recovery and between rounds); records what the returning devices
    hold when they join."""

    def __init__(self):
        self.runner, self.requested, self.returned, self.killed_edge = None, {}, {}, None

    def fault(self, point):
        runner = self.runner
        if point.at == FaultAt.HOSTS_STARTED and "device-host-1" in point.hosts and runner.round_index == 1:
            ray.kill(runner.hosts.handles["device-host-1"], no_restart=True)  # mid-join
        # device-4's new parent dies as its first call of round 3 goes out (one round in
        # flight: elastic runs drain before each boundary), so round 3 loses it whatever
        # the machine's speed; a timer into the round could find the edge's part done.
        if (point.at == FaultAt.CALL_SUBMITTED and runner.round_index == 3 and not runner.rounds_pending
                and self.killed_edge is None and point.node == runner.tree.parent_of.get("device-4")):
            self.killed_edge = point.node
            ray.kill(runner.actors[point.node], no_restart=True)

    def event(self, event):
        runner = self.runner
        if event.kind == EventKind.DECLARE_DEAD and event.round == 3 and "during recovery" not in self.requested:
            self.requested["during recovery"] = rayagg.scale(runner.run_dir, devices=3)
        if event.kind == EventKind.JOIN and event.node in runner.checkpoint.checkpoints:
            self.returned.update(runner.hosts.ask([event.node], "evaluate"))  # restored, not trained yet

    def round_collected(self, result, records):
        if result.round == 4:  # before round 5: the real CLI, from another process, while the run is live
            try:
                rayagg.scale(self.runner.run_dir, devices=40)
            except ScaleError as exc:
                self.requested["out of range"] = str(exc)
            rayagg_cli = pathlib.Path(sys.executable).parent / "rayagg"
            done = subprocess.run([str(rayagg_cli), "scale", str(self.runner.run_dir), "--add", "2"],
                                  capture_output=True, text=True, timeout=120)
            self.requested["cli"] = (done.returncode, done.stdout + done.stderr)


@pytest.fixture(scope="module")
def churned(ray_session, config, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("elastic-run")
    plan = make_plan(config, tiny_dataset)
    churn = Churn()
    churn.runner = runner = RayRunner(replace(plan, config=config), faults=churn.fault)
    started = time.monotonic()
    records, inspected = inspected_run(runner, out, observers=[churn])
    return churn, inspected, records, out, plan, time.monotonic() - started


def devices_by_round(records):
    rounds = {}
    for r in records:
        if r.tier == "device":
            rounds.setdefault(r.round, set()).add(index_of(r.node))
    return rounds


def test_devices_join_and_leave_at_round_boundaries_through_faults(churned):
    churn, inspected, records, out, plan, _ = churned
    assert devices_by_round(records) == {1: {0, 1, 2}, 2: {0, 1, 2, 3}, 3: {0, 1, 2, 3, 4, 5},
                                         4: {0, 1, 2}, 5: {0, 1, 2, 3, 4}}
    events = read_events(out / "events.parquet")
    by_kind = lambda kind: [(e.round, e.node) for e in events if e.kind == kind]
    assert by_kind("join_failed") == [(1, "device-4"), (1, "device-5")]
    assert by_kind("join") == [(1, "device-3"), (2, "device-4"), (2, "device-5"), (4, "device-3"),
                               (4, "device-4")]
    assert by_kind("leave") == [(3, "device-5"), (3, "device-4"), (3, "device-3")]
    assert (3, churn.killed_edge) in by_kind("declare_dead")
    assert {n for r, n in by_kind("reparent")} >= {"device-4"}  # a child that joined that round
    # Nothing lost: the root holds the bridge samples of every device that ever joined.
    joined = [f"device-{i}" for i in range(6)]
    assert inspected["counts"]["cloud-0"] == sum(len(plan.shards[n]) for n in joined)


def test_requests_during_recovery_and_from_the_cli_apply_at_the_next_boundary(churned):
    churn, _, _, out, _, _ = churned
    assert "6 devices active now; 3 from the start of round 4" in churn.requested["during recovery"]
    assert churn.requested["out of range"].endswith("refused: asked for 40 devices; the range is [2, 8]")
    code, output = churn.requested["cli"]
    assert code == 0 and "3 devices active now; 5 from the start of round 5" in output, output


def test_a_returning_device_resumes_the_model_it_left_with(churned):
    churn, _, records, out, _, _ = churned
    left_with = {r.node: r.accuracy for r in records if r.round == 3}
    assert {n: scores.accuracy for n, scores in churn.returned.items()} == \
        {"device-3": left_with["device-3"], "device-4": left_with["device-4"]}


def test_the_run_directory_records_membership_for_a_resume(churned):
    churn, inspected, _, out, plan, _ = churned
    state = RunState.load(out)
    assert state.left == ["device-5"] and set(state.dead) == {"device-5", churn.killed_edge}
    assert sorted(state.bridge_stores(out)) == [out / "bridge" / name for name in
                                                ["cloud-0.parquet", "joined-round-0002.parquet",
                                                 "joined-round-0003.parquet"]]
    samples = store.read_bridge_stores(sorted(state.bridge_stores(out)),
                                       expected_counts=expected_bridge_counts(state, plan))
    assert len(samples) == 6
    longer = replace(plan, config=plan.config.with_rounds(6))
    assert load_for_resume(out, longer) == state  # every file a resume reads verifies
    assert not (out / LIVE_FILE).exists()  # removed when the run ended
    hosts = {(a.name, a.state) for a in inspected["actors"] if a.class_name == "NodeHost"}
    assert ("device-host-1", "ALIVE") in hosts  # back for device-4
    shown = CliRunner().invoke(main, ["status", str(out)]).output
    assert "devices that left: device-5" in shown
    assert "device-host-1    device-4..7  (left: device-5; never joined: device-6..7)" in shown
