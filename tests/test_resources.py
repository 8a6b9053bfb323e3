"""Fail-fast resource checks against fake clusters (no Ray needed)."""
import pytest

from rayagg.config import parse_config
from rayagg.errors import ResourceError
from rayagg.runtime.resources import ClusterNode, actor_options, check_cluster, ray_request


def config(cloud=None, device=None):
    return parse_config({"tree": {"tiers": [
        {"name": "cloud", "model": "cnn", "resources": cloud or {"num_cpus": 1}},
        {"name": "edge", "count": 2, "model": "cnn", "resources": {"num_cpus": 0.25}},
        {"name": "device", "fanout": 2, "model": "cnn", "resources": device or {"num_cpus": 0.1}},
    ]}})


def node(cpus=2.0, **extra):
    labels = extra.pop("labels", {})
    return ClusterNode("10.0.0.1", {"CPU": cpus, "memory": 8 * 2**30, **extra}, labels)


def test_a_fitting_tree_passes():
    check_cluster(config(), [node()], autoscaling=False)


def test_a_gpu_no_node_has_names_tier_request_and_nodes():
    with pytest.raises(ResourceError) as info:
        check_cluster(config(cloud={"num_cpus": 1, "num_gpus": 1}), [node()], autoscaling=False)
    message = str(info.value)
    assert "tier 'cloud'" in message and "'GPU': 1.0" in message and "10.0.0.1" in message


def test_a_request_larger_than_any_single_node_waits_only_for_an_autoscaler():
    nodes = [node(cpus=2.0), node(cpus=2.0)]
    with pytest.raises(ResourceError, match="tier 'cloud'"):
        check_cluster(config(cloud={"num_cpus": 3}), nodes, autoscaling=False)
    # A worker group scaled to zero: the autoscaler launches a machine when the host asks.
    check_cluster(config(cloud={"num_cpus": 3}), nodes, autoscaling=True)


def test_totals_beyond_the_cluster_fail_unless_autoscaling():
    big = config(device={"num_cpus": 0.5})  # 1 + 0.5 + 2.0 = 3.5 CPUs
    with pytest.raises(ResourceError, match="needs 3.5 CPU in all but the cluster has 2"):
        check_cluster(big, [node()], autoscaling=False)
    check_cluster(big, [node()], autoscaling=True)


def test_custom_resources_and_labels_pin_tiers():
    pinned = config(device={"num_cpus": 0.1, "custom": {"device_slot": 1},
                            "labels": {"tier": "device"}})
    with pytest.raises(ResourceError, match="labels"):
        check_cluster(pinned, [node(device_slot=4)], autoscaling=False)
    check_cluster(pinned, [node(), node(device_slot=4, labels={"tier": "device"})],
                  autoscaling=False)


def test_requests_and_options_use_rays_names():
    resources = config(cloud={"num_cpus": 2, "num_gpus": 0.5, "memory_mb": 1024,
                              "custom": {"cloud": 1}, "labels": {"tier": "cloud"}}).tree.tiers[0].resources
    assert ray_request(resources) == {"CPU": 2, "GPU": 0.5, "cloud": 1, "memory": 1024 * 2**20}
    options = actor_options(resources)
    assert options["memory"] == 1024 * 2**20 and options["label_selector"] == {"tier": "cloud"}
    assert options["resources"] == {"cloud": 1}
