"""What the run asks the autoscaler for ahead of a scale-up (rayagg/core/capacity.py).
Pure code: no Ray; the request itself is checked on a fake autoscaler in
tests/test_autoscaling.py."""
import pathlib

import pytest

from rayagg.config import load_config
from rayagg.core.capacity import Capacity, Demand, applied, requests_capacity
from rayagg.core.membership import Change, toward
from rayagg.core.tree import Tree

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"
DEVICE = {"CPU": 0.04}  # four devices of 0.01 CPU on a host


def elastic(*, autoscaling=True, request_resources=True, labels=None, cloud_cpus=1.0):
    """elastic.yaml (1 cloud, 3 edges, 9 of 6..30 devices) with devices packed 4 to a host."""
    config = load_config(CONFIGS / "elastic.yaml")
    cloud, edge, device = (tier.model_dump() for tier in config.tree.tiers)
    cloud["resources"]["num_cpus"] = cloud_cpus
    device.update(nodes_per_actor=4)
    device["elastic"]["request_resources"] = request_resources
    if labels:
        device["resources"]["labels"] = labels
    return config.with_changes(tree={"tiers": [cloud, edge, device]}, runtime={"autoscaling": autoscaling})


def start_tree(config) -> Tree:
    return Tree.balanced([tier.name for tier in config.tree.tiers], config.tree.counts())


def device_bundles(demand: Demand) -> int:
    """Device hosts asked for (a device asks for 0.01 CPU, an edge 0.2)."""
    return sum(1 for bundle in demand.bundles if bundle["CPU"] <= DEVICE["CPU"] + 1e-9)


def test_the_demand_is_the_whole_tree_one_bundle_per_host():
    config = elastic()
    capacity = Capacity.of(config)
    tree = start_tree(config)
    demand = capacity.demand(capacity.planned(tree, (), Change(), None))
    # cloud, three edges (one host each), devices 0..8 on hosts 0..2 (4 a host)
    assert demand.bundles == ({"CPU": 1.0}, {"CPU": 0.2}, {"CPU": 0.2}, {"CPU": 0.2}, *[pytest.approx(DEVICE)] * 3)
    assert demand.describe() == "1 x {'CPU': 1.0}, 3 x {'CPU': 0.2}, 3 x {'CPU': 0.04}"
    assert Demand().describe() == "nothing"


@pytest.mark.parametrize("step, hosts", [(None, 3), (20, 5), (30, 8), (6, 3)])
def test_a_schedule_step_a_round_ahead_adds_its_hosts_and_never_removes_any(step, hosts):
    config = elastic()
    capacity = Capacity.of(config)
    nodes = capacity.planned(start_tree(config), (), Change(), step)
    assert device_bundles(capacity.demand(nodes)) == hosts  # 6: the round about to run still needs 9


def test_a_scale_down_lowers_the_demand_at_the_boundary_its_devices_leave():
    config = elastic()
    capacity = Capacity.of(config)
    tree = start_tree(config)
    change = toward(capacity.members(tree, ()), 6)  # device-8..6 leave: host 2 (8..11) empties
    assert change.leaves == ("device-8", "device-7", "device-6")
    assert device_bundles(capacity.demand(capacity.planned(tree, (), change, None))) == 2


def test_a_request_asks_for_the_hosts_of_the_devices_it_will_bring():
    config = elastic()
    capacity = Capacity.of(config)
    tree = start_tree(config)
    dead = {"device-1", "edge-2"}  # device-1 away: it returns first; a dead edge asks for nothing
    devices = capacity.requested(tree, dead, 13)
    assert devices == {f"device-{i}" for i in range(13)}
    nodes = capacity.planned(tree, dead, Change(), None) | devices
    assert "edge-2" not in nodes and device_bundles(capacity.demand(nodes)) == 4
    assert len(capacity.demand(nodes).bundles) == 1 + 2 + 4


def test_applying_a_change_moves_devices_between_active_away_and_unused():
    capacity = Capacity.of(elastic())
    members = capacity.members(start_tree(elastic()), {"device-3"})
    after = applied(members, Change(joins=("device-3", "device-9"), leaves=("device-8",)))
    assert after.active == tuple(f"device-{i}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 9))
    assert after.away == ("device-8",)
    assert after.unused == tuple(f"device-{i}" for i in range(10, 30))
    assert applied(after, toward(after, 9)) == after


def test_hosts_that_ask_for_nothing_are_left_out_and_labels_follow_their_bundles():
    config = elastic(labels={"tier": "device"}, cloud_cpus=0)
    capacity = Capacity.of(config)
    demand = capacity.demand(capacity.planned(start_tree(config), (), Change(), None))
    assert len(demand.bundles) == len(demand.labels) == 3 + 3  # no cloud bundle
    assert demand.labels == ({}, {}, {}, {"tier": "device"}, {"tier": "device"}, {"tier": "device"})


@pytest.mark.parametrize("autoscaling, flag, asks", [(True, True, True), (True, False, False), (False, True, False)])
def test_only_an_autoscaling_elastic_run_asks_ahead(autoscaling, flag, asks):
    assert requests_capacity(elastic(autoscaling=autoscaling, request_resources=flag)) is asks


def test_a_fixed_tree_never_asks(tiny_config):
    assert not requests_capacity(tiny_config.with_changes(runtime={"autoscaling": True}))
