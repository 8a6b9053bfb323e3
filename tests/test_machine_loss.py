"""Losing whole machines of an emulated cluster (tests/emulated_cluster.py): a small tree of
the paper tree's shape on a head, a cloud machine and three edge sites, each site an edge
host and a device host, placed by the machines' `tier` labels and custom resources as
cluster/emulated-8.yaml places the paper tree. A site is removed mid-round 1, a second
mid-round 2: both rounds are retried and complete, the dead edges' orphans move to the
surviving edge, the dead devices drop out with their bridge samples kept by their
ancestors, and every loss is declared within interval x max_missed + 1 s."""
import pytest
from emulated_cluster import MachineLoss, emulated_cluster

from rayagg.core.events import EventKind
from rayagg.learning.plan import make_plan
from rayagg.loop import execute
from rayagg.observe import RunObserver
from rayagg.rundir.events import read_events
from rayagg.runtime.runner import RayRunner

pytestmark = pytest.mark.ray

MB = 2**20
SITES = 3
DEFINITION = {  # cluster/emulated-8.yaml, cut to the small tree
    "head_node_type": "ray.head.default",
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 0, "object_store_memory": 100 * MB}},
        "cloud": {"min_workers": 1, "resources": {"CPU": 1, "object_store_memory": 80 * MB, "cloud": 1},
                  "labels": {"tier": "cloud"}},
        "edge": {"min_workers": SITES, "labels": {"tier": "edge"},
                 "resources": {"CPU": 1, "object_store_memory": 80 * MB, "edge": 1, "device_slot": 2}}}}


@pytest.fixture
def machines():
    with emulated_cluster(DEFINITION) as machines:
        yield machines


class Ending(RunObserver):
    """The tree, the dead and every live node's bridge-sample count as the run ends (no
    dashboard needed: the emulated head runs without one)."""

    def __init__(self, runner):
        self.runner, self.seen = runner, {}

    def run_finished(self, outcome):
        runner = self.runner
        self.seen.update(tree=runner.tree, dead=runner.dead,
                         counts=runner.hosts.ask(runner.live_nodes, "bridge_sample_count"))


def small_tree(tiny_config):
    """1 CNN cloud, 3 edges one to a host, 6 devices two to a host, on fewer samples; one
    round in flight, so each loss lands in its own round."""
    placed = [("cloud", {"custom": {"cloud": 1}}, 0.5, 1),
              ("edge", {"custom": {"edge": 1}}, 0.25, 1),
              ("device", {"custom": {"device_slot": 1}}, 0.1, 2)]
    tiers = []
    for tier, (name, resources, cpus, per_host) in zip(tiny_config.tree.tiers, placed):
        raw = {**tier.model_dump(), "model": "cnn", "nodes_per_actor": per_host,
               "resources": {"num_cpus": cpus, "labels": {"tier": "cloud" if name == "cloud" else "edge"},
                             **resources}}
        if name == "edge":
            raw["fanout"] = 3
        tiers.append(raw)
    return tiny_config.with_changes(tree={"tiers": tiers}, data={"train_samples": 240, "test_samples": 100},
                                    runtime={"rounds_in_flight": 1}, training={"rounds": 2})


def test_losing_two_machines_in_consecutive_rounds(machines, tiny_config, tiny_dataset, tmp_path):
    config = small_tree(tiny_config)
    plan = make_plan(config, tiny_dataset)
    loss = MachineLoss(machines, [1, 2])
    loss.runner = runner = RayRunner(plan, faults=loss.fault)
    ending = Ending(runner)
    records = execute(runner, tmp_path, observers=[ending])
    inspected = ending.seen
    loss.join()

    # both losses were edge sites carrying an edge host and a device host
    assert [len(lost.hosts) for lost in loss.lost] == [2, 2]
    lost_nodes = loss.lost[0].nodes | loss.lost[1].nodes
    assert inspected["dead"] == lost_nodes
    assert sum(1 for node in lost_nodes if node.startswith("edge")) == 2
    events = read_events(tmp_path / "events.parquet")
    deadline_s = config.supervision.heartbeat_interval_s * config.supervision.max_missed + 1
    for lost, round_index in zip(loss.lost, (1, 2)):
        declared = {e.node: e for e in events if e.kind == EventKind.DECLARE_DEAD and e.node in lost.nodes}
        assert set(declared) == lost.nodes
        assert all(e.round == round_index for e in declared.values())
        assert max(e.monotonic_s for e in declared.values()) - lost.at <= deadline_s
    assert [e.detail.split(" after")[0] for e in events if e.kind == EventKind.RETRY] == [
        "round 1 retried", "round 2 retried"]

    # the surviving edge adopted every orphan, and no bridge sample was lost
    (survivor,) = [n for n in plan.tree.nodes_of_tier(1) if n not in lost_nodes]
    tree = inspected["tree"]
    assert {tree.parent_of[d] for d in plan.tree.nodes_of_tier(2)} == {survivor}
    orphans = {e.node for e in events if e.kind == EventKind.REPARENT}
    assert orphans and orphans == {d for d in plan.tree.nodes_of_tier(2)
                                   if plan.tree.parent_of[d] != survivor}
    total = sum(len(shard) for shard in plan.shards.values())
    assert inspected["counts"]["cloud-0"] == inspected["counts"][survivor] == total
    assert sorted({r.round for r in records if r.node == "cloud-0"}) == [1, 2]
