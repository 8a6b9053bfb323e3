"""Several Ray nodes on one machine: cloud, edges and devices pinned to separate nodes by
custom resources (the devices on one host actor); the node hosting an edge is removed
mid-round and the run completes."""
import threading
import time

import pytest
import ray
from ray.cluster_utils import Cluster
from conftest import inspected_run

from rayagg.learning.plan import make_plan
from rayagg.runtime.runner import RayRunner

pytestmark = pytest.mark.ray


MB = 2**20


@pytest.fixture
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 100 * MB,
        # notice a dead node in ~5 s instead of ~15 s; not less: a loaded 2-core CI box
        # must not miss heartbeats of a live node
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}})
    nodes = {"cloud": cluster.add_node(num_cpus=1, resources={"cloud": 1}, object_store_memory=100 * MB)}
    for index in range(2):
        nodes[f"edge-{index}"] = cluster.add_node(num_cpus=1, resources={"edge": 1},
                                                  object_store_memory=100 * MB)
    nodes["devices"] = cluster.add_node(num_cpus=1, resources={"device": 4}, object_store_memory=100 * MB)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def pinned(tiny_config):
    tiers = tiny_config.model_dump()["tree"]["tiers"]
    for tier, custom, cpus in zip(tiers, ("cloud", "edge", "device"), (0.5, 0.5, 0.2)):
        tier["resources"] = {"num_cpus": cpus, "custom": {custom: 1}}
    tiers[2]["nodes_per_actor"] = 4  # one device host asking for device: 4, 0.8 CPU
    return tiny_config.with_changes(tree={"tiers": tiers}, training={"rounds": 2})


def test_removing_an_edges_machine(cluster, tiny_config, tiny_dataset, tmp_path):
    test_cluster, nodes = cluster
    config = pinned(tiny_config)
    plan = make_plan(config, tiny_dataset)
    runner = RayRunner(plan)

    def remove_edge_machine():
        while runner.round_index < 2:
            time.sleep(0.05)
        time.sleep(1.0)
        host = runner.placement["edge-0"].ray_node_id
        victim = next(n for n in nodes.values() if n.node_id == host)
        test_cluster.remove_node(victim, allow_graceful=False)

    threading.Thread(target=remove_edge_machine, daemon=True).start()
    records, inspected = inspected_run(runner, tmp_path)
    hosts = {node: report.ray_node_id for node, report in runner.placement.items()}
    assert len({hosts["cloud-0"], hosts["edge-1"], hosts["device-host-0"]}) == 3
    assert inspected["dead"] == {"edge-0"}
    # the supervisor lives with the driver, never on a machine that may be removed
    supervisor = [a for a in inspected["actors"] if a.name == "supervisor" and a.state == "ALIVE"]
    assert [a.node_id for a in supervisor] == [test_cluster.head_node.node_id]
    assert {inspected["tree"].parent_of[d] for d in ("device-0", "device-1")} == {"edge-1"}
    assert inspected["counts"]["cloud-0"] == sum(len(s) for s in plan.shards.values())
    assert sorted({r.round for r in records if r.node == "cloud-0"}) == [1, 2]
