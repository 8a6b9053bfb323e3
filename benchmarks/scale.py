"""Runs a config on a local Ray and prints what the tree costs: memory, start-up, rounds.

Usage: .venv/bin/python benchmarks/scale.py CONFIG [--rounds 2]
e.g.   .venv/bin/python benchmarks/scale.py jobs/configs/paper-fmnist.yaml --rounds 2

Prints, for the README's "Scale" table:
* peak memory of the whole run above idle: the machine's used memory (MemTotal -
  MemAvailable, sampled every 0.2 s) less what was used before Ray started;
* every host actor's resident memory after the last round, and per packed node: the
  host's memory less that of an empty host of the same tier (same torch, autoencoder,
  test split and shards, no nodes), divided by its nodes;
* start-up: Ray start to the first round (hosts started, bridge samples encoded, stored
  and sent up, the round-0 checkpoint written);
* each round's wall-clock seconds, and the cloud's busy seconds in it (its logits and
  learn calls: the chain every round waits on) against the other tiers' summed work.
"""
import argparse
import pathlib
import tempfile
import threading
import time

import ray

from rayagg.config import load_config
from rayagg.plan import make_plan
from rayagg.run import execute
from rayagg.runtime import RayRunner
from rayagg.runtime.host import NodeHost

MB = 2**20


def used_mb() -> float:
    fields = dict(line.split(":", 1) for line in pathlib.Path("/proc/meminfo").read_text().splitlines())
    kib = lambda key: int(fields[key].split()[0])
    return (kib("MemTotal") - kib("MemAvailable")) / 1024


class Sampler:
    """Samples the machine's used memory in a thread; ``peak_mb`` is the highest seen."""

    def __init__(self, period_s: float = 0.2):
        self.peak_mb, self._period_s, self._stop = used_mb(), period_s, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.peak_mb = max(self.peak_mb, used_mb())

    def stop(self) -> None:
        self._stop.set()


class MeasuredRunner(RayRunner):
    """Marks start-up and rounds, and reads every host's memory before closing."""

    def connect(self) -> None:
        self.marks = {"ray_start": time.monotonic()}
        self.round_s: list[float] = []
        super().connect()

    def submit_round(self, round_index, checkpoint_dir=None, attempt=1) -> None:
        self.marks.setdefault("first_round", time.monotonic())
        super().submit_round(round_index, checkpoint_dir, attempt)

    def collect_round(self):
        result = super().collect_round()
        self.round_s.append(result.seconds)
        return result

    def close(self) -> None:
        timeout_s = self.plan.config.runtime.startup_timeout_s
        self.hosts_now = dict(zip(self.hosts.handles, ray.get(
            [handle.ready.remote() for handle in self.hosts.handles.values()], timeout=timeout_s)))
        self.empty_mb = {}
        for name, layout in self.hosts.layout.items():
            if len(layout.nodes) > 1 and layout.tier not in self.empty_mb:
                empty = NodeHost.options(num_cpus=0, namespace=self.namespace).remote(ray.put(self.plan), name, [])
                self.empty_mb[layout.tier] = ray.get(empty.ready.remote(), timeout=timeout_s)["rss_mb"]
                ray.kill(empty)
        super().close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    config = load_config(args.config).with_rounds(args.rounds)
    plan = make_plan(config)  # outside the measurement: the autoencoder may pretrain here
    idle_mb = used_mb()
    sampler = Sampler()
    runner = MeasuredRunner(plan)
    records = execute(runner, pathlib.Path(tempfile.mkdtemp(prefix="rayagg-scale-")), echo=lambda line: None)
    sampler.stop()
    report(config, runner, records, idle_mb, sampler.peak_mb)


def report(config, runner, records, idle_mb: float, peak_mb: float) -> None:
    tree = runner.tree
    print(f"{config.name}: {len(tree.nodes)} nodes "
          f"({', '.join(f'{len(tree.nodes_of_tier(i))} {t}' for i, t in enumerate(tree.tier_names))}), "
          f"{len(runner.hosts_now)} host actors")
    print(f"nodes in metrics: {len({r.node for r in records})} of {len(tree.nodes)}")
    print(f"peak memory above idle: {(peak_mb - idle_mb) / 1024:.2f} GB (idle {idle_mb / 1024:.2f} GB)")
    print(f"start-up (Ray start -> first round): {runner.marks['first_round'] - runner.marks['ray_start']:.1f} s")
    for host, info in runner.hosts_now.items():
        tier = runner.hosts.layout[host].tier
        nodes = len(info["nodes"])
        line = f"  {host:<16} {nodes:>4} nodes  rss {info['rss_mb']:7.0f} MB  peak {info['peak_rss_mb']:7.0f} MB"
        if tier in runner.empty_mb and nodes:
            per_node = (info["rss_mb"] - runner.empty_mb[tier]) / nodes
            line += f"  empty host {runner.empty_mb[tier]:.0f} MB, {per_node:.2f} MB per node"
        print(line)
    root = tree.root
    for index, seconds in enumerate(runner.round_s, 1):
        work = {tier: sum(r.seconds for r in records if r.round == index and r.tier == tier)
                for tier in tree.tier_names}
        others = ", ".join(f"{tier} {work[tier]:.1f} s" for tier in tree.tier_names[1:])
        print(f"round {index}: {seconds:.1f} s; cloud busy {work[tree.tier_name(root)]:.1f} s; "
              f"summed work of {others}")
    cloud = [r for r in records if r.node == root]
    print("cloud accuracy: " + " ".join(f"{100 * r.accuracy:.1f}%" for r in cloud))


if __name__ == "__main__":
    main()
