"""How long a scale-up waits for its machines: with and without asking the autoscaler ahead.

Usage: .venv/bin/python benchmarks/join_latency.py [--pairs 3] [--round-s 20] [--cache DIR]

Each run starts a fake autoscaling cluster (tests/fake_autoscaler.py: a "machine" is one
more raylet on this machine, booted by Ray's real autoscaler) and a small elastic tree:
1 cloud, 2 edges, devices 2 of 2..4, packed 2 to a host, each host needing a whole
`device_slot` machine, which only the autoscaler adds. As soon as round 2 is submitted,
`rayagg.scale(RUN_DIR, devices=4)` asks for 4 devices; the two new ones need a second
machine. Round 2 is then held open until `--round-s` seconds after the request (the
driver collects it only then): a round in flight of that length, the same in both modes,
where a slowed-down node would stretch with the CPU the booting machine takes on this
one machine. The run prints the seconds from the request to: the second machine up, the
round boundary, the new devices joined (their host started, shards encoded), and a new
device's first training step done (in round 3). Runs alternate:
`elastic.request_resources: true` (the default: the supervisor asks the autoscaler for
the machine when it accepts the request) then false (the host asks for it when it
starts, at the boundary), back to back, `--pairs` times.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

from rayagg.observe import RunObserver

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "jobs" / "configs"
MACHINES = {"device_machine": {"resources": {"CPU": 1, "device_slot": 2}, "max_workers": 2}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--round-s", type=float, default=20.0, help="how long round 2 is in flight after the request")
    parser.add_argument("--cache", default=None, help="autoencoder cache (default: a temp dir shared by the runs)")
    parser.add_argument("--one", choices=["ahead", "at-boundary"], help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one == "ahead", args.round_s, args.cache, pathlib.Path(args.out))))
        return
    with tempfile.TemporaryDirectory(prefix="rayagg-join-") as scratch:
        results = run_pairs(args.pairs, args.round_s, args.cache or str(pathlib.Path(scratch) / "cache"), scratch)
    print("\nmedian seconds after `rayagg.scale(devices=4)`:")
    for mode, runs in results.items():
        print(f"  {mode:>11}: " + "  ".join(f"{key} {median([r[key] for r in runs]):6.1f}" for key in runs[0]))


def run_pairs(pairs: int, round_s: float, cache: str, scratch: str) -> dict[str, list[dict]]:
    """Each mode once per pair, back to back, each in a fresh process (a process that
    joined a cluster keeps its auth mode); prints each run's figures."""
    results: dict[str, list[dict]] = {"ahead": [], "at-boundary": []}
    for pair in range(pairs):
        for mode in results:
            out = pathlib.Path(scratch) / f"{mode}-{pair}" / "run"
            done = subprocess.run([sys.executable, __file__, "--one", mode, "--round-s", str(round_s),
                                   "--cache", cache, "--out", str(out)], capture_output=True, text=True,
                                  timeout=900, env={**os.environ, "RAY_AUTH_MODE": "token"})
            if done.returncode != 0:
                sys.exit(f"{mode} run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[mode].append(result)
            print(f"pair {pair + 1} {mode:>11}: " + "  ".join(f"{k} {v:6.1f}" for k, v in result.items()), flush=True)
    return results


def median(values: list[float]) -> float:
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def config(ahead: bool, cache: str):
    from rayagg.config import load_config

    raw = load_config(CONFIGS / "elastic.yaml").model_dump()
    cloud, edge, device = raw["tree"]["tiers"]
    cloud.update(model="cnn", resources={"num_cpus": 0.5})
    edge.update(count=2, nodes_per_actor=2)
    device.update(count=2, nodes_per_actor=2, resources={"num_cpus": 0, "custom": {"device_slot": 1}},
                  elastic={"min_devices": 2, "max_devices": 4, "request_resources": ahead})
    return load_config(CONFIGS / "elastic.yaml").with_changes(
        data={"train_samples": 120, "test_samples": 60}, tree={"tiers": [cloud, edge, device]},
        training={"rounds": 3},
        runtime={"autoscaling": True, "startup_timeout_s": 300}, autoencoder={"epochs": 5, "cache_dir": cache})


def measure(ahead: bool, round_s: float, cache: str, out: pathlib.Path) -> dict[str, float]:
    """One run; seconds from the scale request to each milestone."""
    sys.path.insert(0, str(ROOT / "tests"))
    import ray
    from fake_autoscaler import alive_worker_count, fake_autoscaling_cluster

    import rayagg
    from rayagg.learning.plan import make_plan
    from rayagg.observe import Observers
    from rayagg.runtime.runner import RayRunner

    plan = make_plan(config(ahead, cache))
    with fake_autoscaling_cluster(MACHINES, head_cpus=2, idle_timeout_s=60) as address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        runner = RayRunner(plan)
        watch = Watch()
        try:
            runner.start(out, observers=Observers([watch]))
            for round_index in (1, 2, 3):
                runner.change_membership(runner.plan_membership(round_index))
                runner.submit_round(round_index)
                if round_index == 2:
                    watch.requested = time.time()
                    rayagg.scale(out, devices=4)
                    threading.Thread(target=watch.machines, args=(alive_worker_count,), daemon=True).start()
                    time.sleep(max(0.0, round_s - (time.time() - watch.requested)))
                runner.collect_round()
                if round_index == 2:
                    watch.boundary = time.time()
        finally:
            runner.close()
            ray.shutdown()
    return watch.figures()


class Watch(RunObserver):
    """Times the milestones after the request: the run's, as it tells its observers; the
    machine count, polled by a thread."""

    NEW = ("device-2", "device-3")

    def __init__(self):
        self.requested: Optional[float] = None
        self.machine_up = self.boundary = self.joined = self.first_step = None

    def machines(self, count) -> None:
        try:
            while self.machine_up is None:
                if count("device_slot") >= 2:
                    self.machine_up = time.time()
                time.sleep(0.2)
        except Exception:  # noqa: BLE001 - the run ended (Ray shut down) first: no figure
            return

    def event(self, event) -> None:
        if self.requested and self.joined is None and "joined in" in event.detail:
            self.joined = event.at

    def step_finished(self, round_index, node, call, value) -> None:
        if node in self.NEW and self.first_step is None:
            self.first_step = time.time()

    def figures(self) -> dict[str, float]:
        since = lambda at: (at - self.requested) if at else float("nan")
        return {"machine up": since(self.machine_up), "boundary": since(self.boundary),
                "joined": since(self.joined), "first step": since(self.first_step)}


if __name__ == "__main__":
    main()
