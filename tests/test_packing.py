"""Host packing: which host carries which nodes, and what it asks Ray for. Pure code."""
import pytest
from conftest import packed

from rayagg.errors import ConfigError, ResourceError
from rayagg.core.packing import home_hosts, pack
from rayagg.nodes import describe_nodes
from rayagg.learning.plan import make_tree
from rayagg.runtime.resources import ClusterNode, check_cluster, ray_request


def test_default_packing_is_one_actor_per_node_named_after_it(tiny_config):
    hosts = pack(tiny_config)
    assert [h.name for h in hosts] == make_tree(tiny_config).nodes
    assert all(h.nodes == (h.name,) for h in hosts)


def test_packed_tiers_fill_hosts_in_index_order(tiny_config):
    config = packed(tiny_config, device=3, edge=2)
    hosts = {h.name: h.nodes for h in pack(config)}
    assert hosts == {"cloud-0": ("cloud-0",), "edge-host-0": ("edge-0", "edge-1"),
                     "device-host-0": ("device-0", "device-1", "device-2"),
                     "device-host-1": ("device-3",)}
    home = home_hosts(pack(config))
    assert home["device-3"] == "device-host-1" and len(home) == 7


def test_a_hosts_request_is_the_sum_of_its_nodes(tiny_config):
    resources = tiny_config.tree.tiers[2].resources.model_copy(update={"memory_mb": 10, "custom": {"dev": 0.5}})
    assert ray_request(resources, 4) == pytest.approx({"CPU": 0.4, "memory": 40 * 2**20, "dev": 2.0})


def test_a_host_too_big_for_any_machine_is_named_with_its_packing(tiny_config):
    config = packed(tiny_config, device=4)  # 4 x 0.1 CPU; cloud 0.5 -> lower it to 0.3
    tiers = config.model_dump()["tree"]["tiers"]
    tiers[0]["resources"] = {"num_cpus": 0.3}
    tiers[1]["resources"] = {"num_cpus": 0.3}
    config = config.with_changes(tree={"tiers": tiers})
    machines = [ClusterNode("10.0.0.1", {"CPU": 0.6}, {}), ClusterNode("10.0.0.2", {"CPU": 3}, {})]
    check_cluster(config, machines, autoscaling=False)  # the 0.4-CPU host fits either
    with pytest.raises(ResourceError, match="tier 'device'.*'CPU': 0.4.*carrying 4 nodes"):
        check_cluster(config, [ClusterNode(f"10.0.0.{i}", {"CPU": 0.35}, {}) for i in range(5)],
                      autoscaling=False)


def test_packed_fractional_gpus_must_be_whole_above_one(tiny_config):
    tiers = tiny_config.model_dump()["tree"]["tiers"]
    tiers[2].update(nodes_per_actor=3, resources={"num_gpus": 0.5})
    with pytest.raises(ConfigError, match="1.5 GPUs per actor"):
        tiny_config.with_changes(tree={"tiers": tiers})


def test_describe_nodes_shows_runs():
    assert describe_nodes(["device-0", "device-1", "device-2", "device-5", "edge-1"]) == \
        "device-0..2, device-5, edge-1"
