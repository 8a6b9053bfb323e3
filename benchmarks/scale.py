"""Runs a config on a local Ray and prints what the tree costs: memory, start-up, rounds.

Usage: .venv/bin/python benchmarks/scale.py CONFIG [--rounds 2]
e.g.   .venv/bin/python benchmarks/scale.py jobs/configs/paper-fmnist.yaml --rounds 2

Prints, for the "Scale" tables of docs/benchmarks.md:
* peak memory of the whole run above idle: the machine's used memory (MemTotal -
  MemAvailable, sampled every 0.2 s) less what was used before Ray started;
* every host actor's resident memory after the last round, and per packed node: the
  host's memory less that of an empty host of the same tier (same torch, autoencoder,
  test split and shards, no nodes), divided by its nodes;
* start-up: Ray start to the first round (hosts started, bridge samples encoded, stored
  and sent up, the round-0 checkpoint written);
* each round's wall-clock seconds, and the cloud's busy seconds in it (its logits and
  learn calls: the chain every round waits on) against the other tiers' summed work;
* the CPU bound of the rounds: the CPU seconds the hosts spent from the first round's
  submission to the end of the last (/proc/PID/stat, every call and its serialisation)
  over the machine's CPUs, against the rounds' wall-clock seconds, and the driver's CPU;
* what the nodes' tensors hold, per tier and purpose (``NodeHost.held_bytes``): the rest
  of a node's memory is Python objects and the allocator's slack.
"""
import argparse
import os
import pathlib
import resource
import tempfile
import threading
import time

import ray

from rayagg.config import load_config
from rayagg.learning.plan import load_data, make_plan
from rayagg.loop import execute
from rayagg.runtime.runner import RayRunner
from rayagg.observe import RunObserver
from rayagg.rundir.live import process_stat
from rayagg.runtime.host import HostReport, NodeHost

MB = 2**20


def cpu_s(pid: int) -> float:
    """The user + system CPU seconds of process ``pid`` of this machine so far."""
    fields = process_stat(pid)  # utime and stime: fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


class Measure(RunObserver):
    """Marks start-up and rounds, and reads every host's memory before the runtime closes."""

    def __init__(self, runner: RayRunner):
        self.runner = runner
        self.marks = {"ray_start": time.monotonic()}
        self.round_s: list[float] = []
        self.hosts_now: dict[str, HostReport] = {}
        self.empty_mb: dict[str, float] = {}
        self.held: dict[str, dict[str, int]] = {}  # tier -> purpose -> bytes
        self.pids: list[int] = []
        self.cpu_at_first_round = self.hosts_cpu_s = self.driver_cpu_s = 0.0

    def run_started(self, run) -> None:
        handles, timeout_s = self.runner.hosts.handles.values(), self.runner.plan.config.runtime.startup_timeout_s
        self.pids = [report.pid for report in ray.get([h.ready.remote() for h in handles], timeout=timeout_s)]

    def round_submitted(self, round_index, steps, attempt) -> None:
        if "first_round" not in self.marks:
            self.marks["first_round"] = time.monotonic()
            self.cpu_at_first_round = sum(map(cpu_s, self.pids))
            self.driver_cpu_s = -_driver_cpu_s()

    def round_collected(self, result, records) -> None:
        self.round_s.append(result.seconds)

    def run_finished(self, outcome) -> None:
        self.hosts_cpu_s = sum(map(cpu_s, self.pids)) - self.cpu_at_first_round
        self.driver_cpu_s += _driver_cpu_s()
        runner, timeout_s = self.runner, self.runner.plan.config.runtime.startup_timeout_s
        for name, held in zip(runner.hosts.handles, ray.get(
                [handle.held_bytes.remote() for handle in runner.hosts.handles.values()], timeout=timeout_s)):
            tier = self.held.setdefault(runner.hosts.layout[name].tier, {})
            for purpose, size in held.items():
                tier[purpose] = tier.get(purpose, 0) + size
        self.hosts_now = dict(zip(runner.hosts.handles, ray.get(
            [handle.ready.remote() for handle in runner.hosts.handles.values()], timeout=timeout_s)))
        for name, layout in runner.hosts.layout.items():
            if len(layout.nodes) > 1 and layout.tier not in self.empty_mb:
                empty = NodeHost.options(num_cpus=0, namespace=runner.namespace).remote(
                    ray.put(runner.plan), name, [], *runner.hosts.data_args(name))
                self.empty_mb[layout.tier] = ray.get(empty.ready.remote(), timeout=timeout_s).rss_mb
                ray.kill(empty)


def _driver_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    config = load_config(args.config).with_rounds(args.rounds)
    dataset = load_data(config)
    plan = make_plan(config, dataset)  # outside the measurement: the autoencoder may pretrain here
    idle_mb = used_mb()
    sampler = Sampler()
    runner = RayRunner(plan, dataset=dataset)
    del dataset  # as `rayagg run` does: the runner drops it once shipped (data.source: driver)
    measure = Measure(runner)
    records = execute(runner, pathlib.Path(tempfile.mkdtemp(prefix="rayagg-scale-")), observers=[measure])
    sampler.stop()
    report(config, runner.tree, runner.hosts.layout, measure, records, idle_mb, sampler.peak_mb)


def report(config, tree, layout, measure: Measure, records, idle_mb: float, peak_mb: float) -> None:
    print(f"{config.name}: {len(tree.nodes)} nodes "
          f"({', '.join(f'{len(tree.nodes_of_tier(i))} {t}' for i, t in enumerate(tree.tier_names))}), "
          f"{len(measure.hosts_now)} host actors")
    print(f"nodes in metrics: {len({r.node for r in records})} of {len(tree.nodes)}")
    print(f"peak memory above idle: {(peak_mb - idle_mb) / 1024:.2f} GB (idle {idle_mb / 1024:.2f} GB)")
    print(f"start-up (Ray start -> first round): {measure.marks['first_round'] - measure.marks['ray_start']:.1f} s")
    for host, info in measure.hosts_now.items():
        tier, nodes = layout[host].tier, len(info.nodes)
        line = f"  {host:<16} {nodes:>4} nodes  rss {info.rss_mb:7.0f} MB  peak {info.peak_rss_mb:7.0f} MB"
        if tier in measure.empty_mb and nodes:
            per_node = (info.rss_mb - measure.empty_mb[tier]) / nodes
            line += f"  empty host {measure.empty_mb[tier]:.0f} MB, {per_node:.2f} MB per node"
        print(line)
    root = tree.root
    for index, seconds in enumerate(measure.round_s, 1):
        work = {tier: sum(r.seconds for r in records if r.round == index and r.tier == tier)
                for tier in tree.tier_names}
        others = ", ".join(f"{tier} {work[tier]:.1f} s" for tier in tree.tier_names[1:])
        print(f"round {index}: {seconds:.1f} s; cloud busy {work[tree.tier_name(root)]:.1f} s; "
              f"summed work of {others}")
    wall, cpus = sum(measure.round_s), os.cpu_count()
    print(f"rounds: {wall:.1f} s; hosts' CPU {measure.hosts_cpu_s:.1f} s, CPU bound "
          f"{measure.hosts_cpu_s / cpus:.1f} s over {cpus} CPUs: rounds / CPU bound "
          f"{wall / (measure.hosts_cpu_s / cpus):.2f}; the driver's CPU {measure.driver_cpu_s:.1f} s")
    for index, tier in enumerate(tree.tier_names):
        count = len(tree.nodes_of_tier(index))
        held = measure.held.get(tier, {})
        print(f"  tensors per {tier} node: {sum(held.values()) / count / 1024:.0f} KB ("
              + ", ".join(f"{purpose} {size / count / 1024:.0f}" for purpose, size in held.items()) + ")")
    cloud = [r for r in records if r.node == root]
    print("cloud accuracy: " + " ".join(f"{100 * r.accuracy:.1f}%" for r in cloud))


if __name__ == "__main__":
    main()
