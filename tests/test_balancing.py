"""Load balancing on a real local Ray: `rayagg balance-test` on the tiny tree with a slow
edge, and an edge killed while a rebalancing move is under way.

The tree: 2 edges, 4 devices on one host actor, CNNs everywhere, edge-0 emulating a
machine 6x slower (emulation.slowdown). least-busy measures that in round 1 and moves a
device from edge-0 to edge-1 before round 2. (The table's comparison with `none` is
tested without Ray in test_balance.py: a second run here would cost half a minute.)
"""
import json
import pathlib

import pytest
import ray
from click.testing import CliRunner
from conftest import inspected_run, packed

from rayagg.cli import main
from rayagg.core.events import EventKind
from rayagg.learning.plan import make_plan
from rayagg.observe import RunObserver
from rayagg.rundir.events import read_events
from rayagg.rundir.metrics import read_metrics
from rayagg.runtime.faults import FaultAt
from rayagg.runtime.runner import RayRunner


pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def config(quick_config):
    return packed(quick_config, device=4).with_changes(
        training={"rounds": 2},
        balance={"policy": "least-busy", "every": 1, "max_moves": 1, "threshold": 1.1, "cooldown": 2},
        emulation={"slowdown": {"edge-0": 6}})


def shard_sizes(plan):
    return {leaf: len(shard) for leaf, shard in plan.shards.items()}


def test_balance_test_compares_policies_and_records_each_edges_load(ray_session, config, tmp_path):
    config_path = tmp_path / "slow-edge.yaml"
    config_path.write_text(config.to_yaml())
    out, report = tmp_path / "runs", tmp_path / "results.json"
    result = CliRunner().invoke(main, ["balance-test", str(config_path), "--policies", "least-busy",
                                       "--json", str(report), "--out", str(out)])
    assert result.exit_code == 0, result.output
    [row] = [line.split() for line in result.output.splitlines() if line.startswith("least-busy ")]
    [r] = json.loads(report.read_text())
    assert {"policy", "seconds_per_round", "imbalance", "moves", "cloud_accuracy"} <= set(r)
    assert r["policy"] == "least-busy" and r["moves"] == 1 and r["imbalance"] >= 1
    assert row[1] == f"{r['seconds_per_round']:.1f}" and row[-1] == f"{100 * r['cloud_accuracy']:.1f}"

    run_dir = pathlib.Path(r["run_dir"])
    moved = [e for e in read_events(run_dir / "events.parquet") if e.kind == "rebalance"]
    assert len(moved) == 1 and "edge-0 -> edge-1" in moved[0].detail  # off the slow edge
    records = read_metrics(run_dir / "metrics.parquet")
    device = moved[0].node
    assert [r.parent for r in records if r.node == device] == ["edge-0", "edge-1"]  # trained under each
    sizes = shard_sizes(make_plan(config))
    for r in records:
        assert r.idle_s == pytest.approx(max(0.0, r.round_s - r.seconds))
        if r.tier == "edge":  # what it trained on is exactly its children's samples
            children = [d for d in records if d.round == r.round and d.parent == r.node]
            assert r.children == len(children) and r.bridge_samples == sum(sizes[d.node] for d in children)
    shown = CliRunner().invoke(main, ["status", str(run_dir)]).output
    edge1 = next(r for r in records if r.round == 2 and r.node == "edge-1")
    assert "edge load in round 2; imbalance" in shown, shown
    assert f"edge-1     {edge1.children:>4} children  {edge1.bridge_samples:>7} bridge samples" in shown, shown


class KillDuringMove(RunObserver):
    """Kills the edge receiving a rebalanced device as soon as its samples are sent to it:
    the rebalance event arms it (an observer), the fault hook fires on the next
    add_bridge_samples call submitted."""

    def __init__(self):
        self.runner, self.armed, self.killed = None, False, None

    def event(self, event):
        self.armed = self.armed or event.kind == EventKind.REBALANCE

    def fault(self, point):
        if point.at == FaultAt.CALL_SUBMITTED and point.method == "add_bridge_samples" and self.armed \
                and self.killed is None:
            self.killed = point.node
            ray.kill(self.runner.actors[point.node], no_restart=True)


def test_an_edge_killed_during_a_move_loses_no_bridge_sample(ray_session, config, tiny_dataset, tmp_path):
    plan = make_plan(config, tiny_dataset)
    killer = KillDuringMove()
    killer.runner = runner = RayRunner(plan, faults=killer.fault)
    records, inspected = inspected_run(runner, tmp_path / "run", observers=[killer])
    assert killer.killed == "edge-1"
    kinds = [e.kind for e in read_events(tmp_path / "run" / "events.parquet")]
    assert "rebalance" in kinds and kinds.index("rebalance") < kinds.index("declare_dead")
    assert sorted({r.round for r in records}) == [1, 2]
    # Every device's samples are with the root and with edge-0, which adopted them all.
    total = sum(shard_sizes(plan).values())
    counts = inspected["counts"]
    assert counts["cloud-0"] == total and counts["edge-0"] == total
    assert inspected["dead"] == {"edge-1"}
    assert all(inspected["tree"].parent_of[d] == "edge-0" for d in plan.shards)
