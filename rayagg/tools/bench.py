"""``rayagg bench CONFIG``: where a round's time goes, on Ray and in one process.

One invocation runs CONFIG twice from the same seed: on Ray, where every host records
each call's seconds, torch seconds and CPU seconds, then with the in-process driver (a
child process, ``rayagg run --local``, with torch's default threads). From the Ray run's round
graph (rayagg/core/schedule.py) and those timings it finds the critical path: the longest
chain of calls that must run one after another. It reports:

* seconds per round (median) of both runs and their ratio;
* the critical path per round, and the ratio of the Ray run's wall time to it (1.0:
  the run was as fast as its chain of dependent calls allows on any number of cores);
* the steps per round and the Ray calls that carried them (a host runs a batch of steps
  in one call, rayagg/runtime/batching.py);
* the CPU bound per round: the CPU seconds of all calls divided by the machine's CPUs
  (no schedule beats it either; where it exceeds the critical path, the cores, not the
  dependencies, set the pace);
* the overhead share: the part of the wall time that is not torch work on the critical
  path (scheduling, serialisation, copying, waiting);
* bridge samples trained on per second, the peak memory of each run (the Ray figure
  sums every host's peak RSS and the driver's), and the GFLOP/s achieved (conv and
  matmul FLOPs counted by torch's FlopCounterMode per model, times the samples each
  call handled) against this machine's measured matrix-multiply GFLOP/s.

With ``trace``, it also writes the Ray run's calls as a Chrome/Perfetto trace
(rayagg/tools/trace.py): a track per host and node, the critical path marked.
"""
from __future__ import annotations

import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import ray

from rayagg.config import RunConfig
from rayagg.core.schedule import (EVALUATE, LEARN, LOGITS, TRAIN, Batch, CallTrace, CriticalPath, Step, batch_steps,
                                  critical_path, match_timings)
from rayagg.errors import RayaggError
from rayagg.observe import Progress, RunObserver, RunOutcome, RunStart
from rayagg.rundir.metrics import METRICS_FILE, read_metrics
from rayagg.runtime.runner import RayRunner

MATMUL_SIZE = 1024


@dataclass(frozen=True)
class BenchResult:
    """The figures of one bench (the keys of ``--json``)."""

    config: str
    rounds: int
    seconds_per_round: float  # Ray, median over the rounds
    inprocess_seconds_per_round: float
    ratio: float  # Ray / in-process
    critical_path_s: float  # per round
    critical_path_ratio: float  # Ray wall time / critical path
    cpu_bound_s: float  # per round: CPU seconds of every call / CPUs
    overhead_share: float  # of the wall time, not torch work on the critical path
    peak_rss_bytes: int  # Ray: every host's peak RSS plus the driver's
    inprocess_peak_rss_bytes: int
    samples_per_second: float  # samples trained on (learn and train_local calls) per second, Ray
    gflops_achieved: float
    gflops_machine: float
    cpus: int  # the Ray cluster's
    max_accuracy_difference: float  # between the runs, over every node and round
    critical_path_by_node: dict[str, dict[str, float]] = field(default_factory=dict)
    steps_per_round: float = 0.0  # Ray run, mean over the rounds
    calls_per_round: float = 0.0  # the Ray calls (batches) that carried them
    run_dir: str = ""
    trace_file: str = ""  # with --trace: the Chrome/Perfetto trace of the Ray run


def bench(config: RunConfig, out: pathlib.Path, *, address: Optional[str] = None,
          echo: Callable[[str], None] = print, trace: Optional[pathlib.Path] = None) -> BenchResult:
    """Runs ``config`` on Ray (joined at ``address`` or started), then in-process, writing
    both run directories under ``out`` (``ray``, ``local``); returns the figures. With
    ``trace``, writes the Ray run's trace there (rayagg/tools/trace.py)."""
    from rayagg.rundir.directory import check_new_run_dir

    for name in ("local", "ray"):
        check_new_run_dir(out / name)
    machine = machine_gflops()
    echo(f"rayagg: bench: this machine multiplies {MATMUL_SIZE}x{MATMUL_SIZE} matrices at "
         f"{machine:.1f} GFLOP/s ({os.cpu_count()} CPUs)")
    echo(f"rayagg: bench: Ray -> {out / 'ray'}")  # first: a cluster too small fails at once
    tracer = _run_on_ray(config, out / "ray", address, echo)
    echo(f"rayagg: bench: in-process -> {out / 'local'}")
    local_peak = _run_in_process(config, out)
    return _figures(config, out, tracer, machine, local_peak, trace)


def machine_gflops(size: int = MATMUL_SIZE, repeats: int = 10) -> float:
    """This machine's float32 matrix-multiply GFLOP/s on all its CPUs (best of ``repeats``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm-up: thread pool, caches
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return 2 * size**3 / best / 1e9


def _run_in_process(config: RunConfig, out: pathlib.Path) -> int:
    """``rayagg run --local`` in a child process; returns the child's peak memory in bytes.
    RayaggError with the run's last lines if it fails, or if it outlasts the config's own
    bounds (``startup_timeout_s`` plus ``round_timeout_s`` per round)."""
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.yaml"
    config_file.write_text(config.to_yaml())
    peak_file = out / "local-peak-rss"
    command = [sys.executable, "-c", _IN_PROCESS, str(peak_file),
               "run", str(config_file), "--local", "--out", str(out / "local")]
    runtime = config.runtime
    limit_s = runtime.startup_timeout_s + runtime.round_timeout_s * config.training.rounds
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        raise RayaggError(f"bench: the in-process run did not finish within {limit_s:g} s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise RayaggError(f"bench: the in-process run failed (exit {done.returncode}):\n{tail}")
    return int(peak_file.read_text())


# The CLI in a child that writes its own peak RSS (bytes) to argv[1] when it exits: the
# bench's other children (Ray's processes) must not count.
_IN_PROCESS = """
import resource, sys
from rayagg.cli import main
path = sys.argv.pop(1)
try:
    main()
finally:
    open(path, "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def _run_on_ray(config: RunConfig, run_dir: pathlib.Path, address: Optional[str], echo) -> "HostTracer":
    from rayagg.learning.plan import load_data, make_plan
    from rayagg.loop import execute

    dataset = load_data(config)
    runner = RayRunner(make_plan(config, dataset), address=address, dataset=dataset)
    tracer = HostTracer(runner)
    execute(runner, run_dir, observers=[Progress(lambda line: echo(f"  {line}")), tracer])
    return tracer


class HostTracer(RunObserver):
    """An observer of a Ray run that records every round's steps as submitted, has the
    hosts trace their calls from the first round on, and, before the runtime closes,
    collects the traces, the hosts' peak memory and the cluster's CPUs. A round that lost
    a node is refused: its figures would not describe the config."""

    def __init__(self, runner: RayRunner):
        self.runner = runner
        self.steps: list[list[Step]] = []
        self.batches: list[list[Batch]] = []  # of self.steps, as the runner submitted them
        self.round_numbers: list[int] = []  # of self.steps
        self.traces: dict[str, list[CallTrace]] = {}
        self.hosts_peak_rss = 0
        self.cpus = 1  # the cluster's, read before closing
        self.host_of = runner.hosts.home  # node -> the host that runs it
        self._timeout_s = runner.plan.config.runtime.startup_timeout_s

    def run_started(self, run: RunStart) -> None:
        ray.get([host.start_trace.remote() for host in self.runner.hosts.handles.values()],
                timeout=self._timeout_s)

    def round_submitted(self, round_index: int, steps, attempt: int) -> None:
        if attempt > 1:
            raise RayaggError(f"bench: round {round_index} lost a node; a bench needs a run without failures")
        self.steps.append(list(steps))
        self.batches.append(batch_steps(steps, self.host_of.__getitem__))
        self.round_numbers.append(round_index)

    def run_finished(self, outcome: RunOutcome) -> None:
        handles = list(self.runner.hosts.handles.values())
        if not handles:
            return
        for trace in ray.get([host.take_trace.remote() for host in handles], timeout=self._timeout_s):
            self.traces.update(trace)
        ready = ray.get([host.ready.remote() for host in handles], timeout=self._timeout_s)
        self.hosts_peak_rss = int(sum(report.peak_rss_mb for report in ready) * 2**20)
        self.cpus = int(ray.cluster_resources().get("CPU", 1))


def _figures(config: RunConfig, out: pathlib.Path, tracer: HostTracer, machine: float,
             local_peak: int, trace: Optional[pathlib.Path] = None) -> BenchResult:
    ray_records = read_metrics(out / "ray" / METRICS_FILE)
    local_records = read_metrics(out / "local" / METRICS_FILE)
    ray_round_s = _round_seconds(ray_records)
    wall = sum(ray_round_s.values())
    try:
        timings = match_timings(tracer.steps, tracer.traces)
    except ValueError as exc:
        raise RayaggError(f"bench: the hosts' traces do not fit the rounds submitted: {exc}") from exc
    path = critical_path(tracer.steps, timings, tracer.host_of.__getitem__, tracer.batches)
    if trace is not None:
        from rayagg.tools.trace import write_trace

        write_trace(trace, tracer.steps, timings, tracer.host_of, path, tracer.round_numbers, name=config.name)
    rounds = len(ray_round_s)
    cpu_s = sum(timing.cpu_s for measured in timings for timing in measured)
    samples, flops = _work(tracer.runner.plan, tracer.steps)
    ray_acc = {(r.round, r.node): r.accuracy for r in ray_records}
    local_acc = {(r.round, r.node): r.accuracy for r in local_records}
    seconds, local_seconds = statistics.median(ray_round_s.values()), statistics.median(
        _round_seconds(local_records).values())
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return BenchResult(
        config.name, rounds, seconds, local_seconds, seconds / local_seconds, path.seconds / rounds,
        wall / path.seconds, cpu_s / tracer.cpus / rounds, 1 - path.torch_s / wall,
        tracer.hosts_peak_rss + driver_peak, local_peak,
        samples / wall, flops / wall / 1e9, machine, tracer.cpus,
        max(abs(ray_acc[key] - local_acc.get(key, 0.0)) for key in ray_acc),
        _by_node(path, tracer.steps, timings), sum(map(len, tracer.steps)) / len(tracer.steps),
        sum(map(len, tracer.batches)) / len(tracer.steps), str(out), str(trace or ""))


def _round_seconds(records) -> dict[int, float]:
    return {r.round: r.round_s for r in records}


def _work(plan, rounds: list[list[Step]]) -> tuple[int, float]:
    """(samples trained on, FLOPs) of every step of ``rounds``: a call's samples times its
    model's FLOPs per sample (a leaf's learn also runs its real samples; a local training
    step its own samples, ``method.kappa1`` times). Averaging weights is not counted."""
    per_sample = {tier.name: _flops_per_sample(tier.model, plan) for tier in plan.config.tree.tiers}
    size = plan.shard_sizes
    trained, flops = 0, 0.0
    for steps in rounds:
        for step in steps:
            forward, train = per_sample[plan.tree.tier_name(step.node)]
            count = sum(size[leaf] for leaf in step.leaves)
            if step.call == LOGITS:
                flops += count * forward
            elif step.call == LEARN:
                trained += count
                flops += count * train * (2 if plan.is_leaf(step.node) else 1)
            elif step.call == TRAIN:
                local = size[step.node] * plan.config.method.kappa1
                trained += local
                flops += local * train
            elif step.call == EVALUATE:
                flops += len(plan.test_indices) * forward
    return trained, flops


def _flops_per_sample(model_name: str, plan, batch: int = 8) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per sample of a tier's model, as torch counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rayagg.learning.models import build_model

    channels, size, _ = plan.image_shape
    model = build_model(model_name, in_channels=channels, image_size=size, num_classes=plan.num_classes)
    inputs = torch.rand(batch, *plan.image_shape)
    with FlopCounterMode(display=False) as forward:
        with torch.no_grad():
            model(inputs)
    with FlopCounterMode(display=False) as train:
        model(inputs).sum().backward()
    return forward.get_total_flops() / batch, train.get_total_flops() / batch


def _by_node(path: CriticalPath, rounds: list[list[Step]], timings) -> dict[str, dict[str, float]]:
    """node -> call -> seconds that node spends on the critical path, largest first."""
    spent: dict[str, dict[str, float]] = {}
    for position, index in path.steps:
        step = rounds[position][index]
        calls = spent.setdefault(step.node, {})
        calls[step.call] = calls.get(step.call, 0.0) + timings[position][index].seconds
    return dict(sorted(spent.items(), key=lambda item: -sum(item[1].values())))


def report(result: BenchResult) -> str:
    """The figures as the lines ``rayagg bench`` prints."""
    gb = lambda n: f"{n / 1e9:.2f} GB"
    path = "; ".join(f"{node} {sum(calls.values()):.1f} s (" +
                     ", ".join(f"{call} {s:.1f}" for call, s in calls.items()) + ")"
                     for node, calls in list(result.critical_path_by_node.items())[:4])
    return "\n".join([
        f"{result.config}: {result.rounds} rounds, {result.cpus} CPUs",
        f"  seconds per round     Ray {result.seconds_per_round:.1f}, in-process "
        f"{result.inprocess_seconds_per_round:.1f}: ratio {result.ratio:.2f}",
        f"  critical path         {result.critical_path_s:.1f} s per round; Ray's rounds took "
        f"{result.critical_path_ratio:.2f} x it",
        f"  Ray calls             {result.calls_per_round:.0f} per round carried "
        f"{result.steps_per_round:.0f} steps",
        f"  CPU bound             {result.cpu_bound_s:.1f} s per round (the calls' CPU seconds / "
        f"{result.cpus} CPUs)",
        f"  overhead share        {100 * result.overhead_share:.1f} % of round time is not torch work "
        "on the critical path",
        f"  samples/s             {result.samples_per_second:.0f} trained on",
        f"  peak memory           Ray {gb(result.peak_rss_bytes)} (hosts + driver), in-process "
        f"{gb(result.inprocess_peak_rss_bytes)}",
        f"  GFLOP/s               {result.gflops_achieved:.1f} achieved of {result.gflops_machine:.1f} "
        "(this machine's matrix multiply)",
        f"  accuracy              the runs differ by at most {100 * result.max_accuracy_difference:.1f} "
        "points per node and round",
        f"  on the critical path  {path}",
    ])


def write_json(result: BenchResult, path: pathlib.Path) -> None:
    path.write_text(json.dumps(asdict(result), indent=2) + "\n")
