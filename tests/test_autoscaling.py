"""The Ray autoscaler follows the elastic device tier (a fake autoscaling cluster on one
machine: tests/fake_autoscaler.py).

Device hosts need a `device_slot` resource that only the autoscaled worker type has,
one host per machine. Raising the device count makes the autoscaler add machines for
the new hosts; lowering it empties hosts, which the runner stops, and the idle machines
go; the run trains throughout.
"""
import pathlib
import time
from dataclasses import replace

import ray
from fake_autoscaler import alive_worker_count, fake_autoscaling_cluster, wait_for

import rayagg
from rayagg.config import load_config
from rayagg.plan import make_plan
from rayagg.runtime import RayRunner

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"
IDLE_S = 5


def elastic_on_autoscaled_devices(tiny_config):
    raw = load_config(CONFIGS / "elastic.yaml").model_dump()
    cloud, edge, device = raw["tree"]["tiers"]
    cloud.update(model="cnn", resources={"num_cpus": 0.5})
    edge.update(count=2, nodes_per_actor=2)
    device.update(count=2, nodes_per_actor=2, resources={"num_cpus": 0, "custom": {"device_slot": 1}},
                  elastic={"min_devices": 2, "max_devices": 4})
    return load_config(CONFIGS / "elastic.yaml").with_changes(
        data={"train_samples": 120, "test_samples": 60}, tree={"tiers": [cloud, edge, device]},
        runtime={"autoscaling": True, "startup_timeout_s": 120},
        autoencoder=tiny_config.autoencoder.model_dump())


def test_device_machines_come_and_go_with_the_device_count(tiny_config, tiny_dataset, tmp_path):
    config = elastic_on_autoscaled_devices(tiny_config)
    plan = replace(make_plan(config, tiny_dataset), config=config)
    machines = {"device_machine": {"resources": {"CPU": 1, "device_slot": 2}, "max_workers": 2}}
    with fake_autoscaling_cluster(machines, head_cpus=2, idle_timeout_s=IDLE_S) as address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        runner = RayRunner(plan)
        try:
            runner.start(tmp_path)  # device-host-0 waits for the first machine
            assert alive_worker_count("device_slot") == 1
            seen = [train(runner, 1)]
            rayagg.scale(tmp_path, devices=4)
            seen.append(train(runner, 2))  # one more host, one more machine
            assert alive_worker_count("device_slot") == 2
            rayagg.scale(tmp_path, devices=2)
            seen.append(train(runner, 3))  # device-host-1 emptied and stopped
            assert [len(devices) for devices in seen] == [2, 4, 2]
            assert set(runner.hosts.handles) == {"cloud-0", "edge-host-0", "device-host-0"}
            round_index, deadline = 3, time.monotonic() + 60
            while alive_worker_count("device_slot") > 1:  # the run trains while machines go
                assert time.monotonic() < deadline, "idle device machines were not removed"
                round_index += 1
                train(runner, round_index)
            wait_for(lambda: alive_worker_count("device_slot") == 1, 5, "one device machine left")
        finally:
            runner.close()
            ray.shutdown()


def train(runner, round_index):
    """One round with its membership change; returns the devices that trained in it."""
    runner.change_membership(runner.plan_membership(round_index))
    runner.train_round()
    return sorted(n for n in runner.evaluate() if n.startswith("device-"))
