"""The Ray autoscaler follows the elastic device tier (a fake autoscaling cluster on one
machine: tests/fake_autoscaler.py).

Device hosts need a `device_slot` resource that only the autoscaled worker type has,
one host per machine. Raising the device count asks the autoscaler for the new host's
machine at once (rayagg/core/capacity.py), so it boots while the round in flight trains;
lowering it empties that host, which the runner stops, the run's standing request
shrinks, and the idle machine goes; the run trains throughout, and the request is
withdrawn when it ends.

The scenario runs in a fresh Python process (this file as a script): a process that
has joined a cluster keeps that cluster's auth mode, so it could not start the token-
authenticated local Ray of the tests that follow it.
"""
import json
import os
import pathlib
import subprocess
import sys
import time
from dataclasses import replace

import pytest

pytestmark = pytest.mark.ray


CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"
IDLE_S = 5


def test_device_machines_come_and_go_with_the_device_count(tiny_config, tiny_plan, tmp_path):
    # tiny_plan: the session's autoencoder is pretrained (and cached) before the scenario.
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # a client joining by address needs it
    done = subprocess.run([sys.executable, __file__, str(tmp_path), tiny_config.autoencoder.cache_dir],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["machines at start"] == 1
    assert seen["devices by round"][:4] == [2, 2, 4, 2]
    # `rayagg scale` during round 2 asked for both device hosts' machines before it answered,
    # and the second machine came up before round 2 was collected: no boundary waited for it.
    assert seen["device hosts asked for while round 2 trains"] == 2
    assert seen["rounds in flight when the machine came"] == [2]
    assert seen["machines after growing"] == 2
    assert seen["device hosts asked for after shrinking"] == 1
    assert seen["request after the run"] == []
    assert seen["hosts after shrinking"] == ["cloud-0", "device-host-0", "edge-host-0"]
    assert seen["rounds while machines went"] >= 1 and seen["machines at the end"] == 1


def elastic_on_autoscaled_devices(cache_dir: str):
    from rayagg.config import load_config

    raw = load_config(CONFIGS / "elastic.yaml").model_dump()
    cloud, edge, device = raw["tree"]["tiers"]
    cloud.update(model="cnn", resources={"num_cpus": 0.5})
    edge.update(count=2, nodes_per_actor=2)
    device.update(count=2, nodes_per_actor=2, resources={"num_cpus": 0, "custom": {"device_slot": 1}},
                  elastic={"min_devices": 2, "max_devices": 4})
    return load_config(CONFIGS / "elastic.yaml").with_changes(
        data={"train_samples": 120, "test_samples": 60}, tree={"tiers": [cloud, edge, device]},
        runtime={"autoscaling": True, "startup_timeout_s": 120},
        autoencoder={"epochs": 5, "cache_dir": cache_dir})


def scenario(out: pathlib.Path, cache_dir: str) -> dict:
    """Grows the tier 2 -> 4 -> 2 on the fake cluster and records what it saw."""
    import ray
    from fake_autoscaler import alive_worker_count, fake_autoscaling_cluster, wait_for

    import rayagg
    from rayagg.learning.plan import make_plan
    from rayagg.runtime.runner import RayRunner

    config = elastic_on_autoscaled_devices(cache_dir)
    plan = replace(make_plan(config), config=config)
    machines = {"device_machine": {"resources": {"CPU": 1, "device_slot": 2}, "max_workers": 2}}
    seen: dict = {"devices by round": []}
    with fake_autoscaling_cluster(machines, head_cpus=2, idle_timeout_s=IDLE_S) as address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        runner = RayRunner(plan)
        try:
            runner.start(out)  # device-host-0 waits for the first machine
            seen["machines at start"] = alive_worker_count("device_slot")
            train(runner, 1, seen)
            begin(runner, 2)
            rayagg.scale(out, devices=4)  # while round 2 trains
            seen["device hosts asked for while round 2 trains"] = device_hosts_requested()
            wait_for(lambda: alive_worker_count("device_slot") >= 2, 90, "the second device machine")
            seen["rounds in flight when the machine came"] = runner.rounds_pending
            finish(runner, seen)
            train(runner, 3, seen)  # one more host, on the machine already up
            seen["machines after growing"] = alive_worker_count("device_slot")
            rayagg.scale(out, devices=2)
            train(runner, 4, seen)  # device-host-1 emptied and stopped
            seen["hosts after shrinking"] = sorted(runner.hosts.handles)
            seen["device hosts asked for after shrinking"] = device_hosts_requested()
            round_index, deadline = 4, time.monotonic() + 60
            while alive_worker_count("device_slot") > 1 and time.monotonic() < deadline:
                round_index += 1  # the run trains while the idle machine goes
                train(runner, round_index, seen)
            seen["rounds while machines went"] = round_index - 4
            wait_for(lambda: alive_worker_count("device_slot") <= 1, 5, "the idle device machine to go")
            seen["machines at the end"] = alive_worker_count("device_slot")
        finally:
            runner.close()
            seen["request after the run"] = standing_request()
            ray.shutdown()
    return seen


def begin(runner, round_index: int) -> None:
    """A round boundary and the round's submission, without waiting for it."""
    runner.change_membership(runner.plan_membership(round_index))
    runner.submit_round(round_index)


def finish(runner, seen: dict) -> None:
    """Waits for the round in flight; records how many devices trained in it."""
    scores = runner.collect_round().scores
    seen["devices by round"].append(sum(n.startswith("device-") for n in scores))


def train(runner, round_index: int, seen: dict) -> None:
    """One round with its membership change; records how many devices trained in it."""
    begin(runner, round_index)
    finish(runner, seen)


def standing_request():
    """The cluster's standing ``request_resources`` bundles, as the (v1) autoscaler reads
    them; None if none was ever made."""
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return None if raw is None else json.loads(raw)


def device_hosts_requested() -> int:
    return sum(1 for bundle in standing_request() or [] if "device_slot" in bundle)


if __name__ == "__main__":
    out_dir = pathlib.Path(sys.argv[1])
    (out_dir / "seen.json").write_text(json.dumps(scenario(out_dir / "run", sys.argv[2])))
