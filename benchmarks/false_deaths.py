"""Runs CONFIG on a local Ray while busy processes load every core, and prints the deaths
supervision declared (all false: nothing is killed), the longest heartbeat silence and
what the probes did (issue 25 item 5; docs/failures.md, "Heartbeats under load").

Usage: PYTHONPATH=. .venv/bin/python benchmarks/false_deaths.py CONFIG [--rounds 10]
           [--busy 2] [--nice 15] [--probe-timeout S]
The busy processes spin at niceness NICE: Ray starts its workers at 15, so the default
loads the cores at the actors' own niceness (the fair test); 0 starves them outright.
``--probe-timeout 0`` measures the old rule (silence alone kills).
"""
import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import ray

from rayagg.config import load_config
from rayagg.core.events import Event, EventKind
from rayagg.learning.plan import make_plan
from rayagg.loop import execute
from rayagg.observe import Progress, RunObserver
from rayagg.runtime.runner import RayRunner

SPIN = "while True: pass"


class Deaths(RunObserver):
    """Keeps the events, and the supervisor's heartbeat report before the run closes."""

    def __init__(self, runner: RayRunner):
        self.runner, self.events, self.report = runner, [], None

    def event(self, event: Event) -> None:
        self.events.append(event)

    def run_finished(self, outcome) -> None:
        self.report = ray.get(self.runner.recovery.supervisor.heartbeat_report.remote(), timeout=60)


def start_busy(count: int, nice: int) -> list[subprocess.Popen]:
    """``count`` processes spinning at niceness ``nice``, in this script's process group:
    stopping the script's group (Ctrl-C, ``kill -- -PGID``) stops them too; each also dies
    with this script (parent-death signal)."""
    return [subprocess.Popen([sys.executable, "-c", SPIN], preexec_fn=lambda: _child_of_this(nice))
            for _ in range(count)]


def _child_of_this(nice: int) -> None:
    import ctypes

    os.nice(nice)
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent (Linux)


def stop_busy(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--busy", type=int, default=2, help="busy processes (default: one per core here)")
    parser.add_argument("--nice", type=int, default=15, help="their niceness (Ray's workers run at 15)")
    parser.add_argument("--probe-timeout", type=float, default=None, help="supervision.probe_timeout_s")
    args = parser.parse_args()
    config = load_config(args.config).with_rounds(args.rounds)
    if args.probe_timeout is not None:
        config = config.with_changes(supervision={"probe_timeout_s": args.probe_timeout})
    supervision = config.supervision
    busy = start_busy(args.busy, args.nice)
    started = time.monotonic()
    try:
        runner = RayRunner(make_plan(config))
        deaths = Deaths(runner)
        out = pathlib.Path(tempfile.mkdtemp(prefix="rayagg-false-deaths-"))
        records = execute(runner, out, observers=[Progress(), deaths])
    finally:
        stop_busy(busy)
    wall_s = time.monotonic() - started
    dead = [e for e in deaths.events if e.kind == EventKind.DECLARE_DEAD]
    retries = [e for e in deaths.events if e.kind == EventKind.RETRY]
    report = deaths.report
    rounds = sorted({r.round for r in records})
    round_s = [next(r.round_s for r in records if r.round == n) for n in rounds]
    print(f"config: {args.config}, {len(rounds)} rounds, {args.busy} busy processes at niceness {args.nice}, "
          f"heartbeats every {supervision.heartbeat_interval_s:g} s x {supervision.max_missed} missed, "
          f"probe timeout {supervision.probe_timeout_s:g} s")
    print(f"wall {wall_s:.0f} s; round seconds: mean {sum(round_s) / len(round_s):.1f}, max {max(round_s):.1f}")
    print(f"false deaths: {len(dead)}; rounds retried: {len(retries)}")
    for event in dead:
        print(f"  round {event.round}: {event.detail}")
    print(f"max heartbeat silence: {report.max_silence_s:.2f} s (supervisor stalls discounted); "
          f"max gap between a host's sends: {report.max_send_gap_s:.2f} s; "
          f"supervisor not scheduled: {report.supervisor_stalled_s:.2f} s in all")
    print(f"probes: {report.probes_sent} sent, {report.probes_answered} answered, "
          f"{report.probes_unanswered} unanswered")


if __name__ == "__main__":
    main()
