"""Kills one node of a run mid-round and prints what recovery cost.

Usage: .venv/bin/python benchmarks/failure.py CONFIG [--node edge-0] [--round 2] [--delay 5] [--replace]
Runs CONFIG on a local Ray, kills NODE's actor DELAY seconds into round ROUND, then prints
the detection latency (kill -> declared dead), the time to re-parent (declared dead ->
orphans' bridge samples at the new parent, i.e. the retry starting), every round's
seconds and the final accuracy per tier. Without --node nothing is killed (the baseline).
With --replace the run has ``supervision.replace_dead`` on: a dead edge is replaced from
its checkpoint and keeps its children, so the second figure is the time to replace it.
"""
import argparse
import pathlib
import tempfile
import threading
import time

import ray

from rayagg.config import load_config
from rayagg.metrics import tier_means
from rayagg.plan import make_plan
from rayagg.run import execute
from rayagg.runtime import RayRunner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--node", default=None)
    parser.add_argument("--round", type=int, default=2)
    parser.add_argument("--delay", type=float, default=5.0)
    parser.add_argument("--replace", action="store_true", help="turn supervision.replace_dead on")
    args = parser.parse_args()
    config = load_config(args.config)
    if args.replace:
        config = config.with_changes(supervision={"replace_dead": True})
    runner = RayRunner(make_plan(config))
    killed = {}

    def killer() -> None:
        while runner.round_index < args.round:
            time.sleep(0.05)
        time.sleep(args.delay)
        killed["at"] = time.monotonic()
        ray.kill(runner.actors[args.node], no_restart=True)

    if args.node:
        threading.Thread(target=killer, daemon=True).start()
    out = pathlib.Path(tempfile.mkdtemp(prefix="rayagg-failure-"))
    records = execute(runner, out, echo=print)
    for event in runner.events:
        print(f"  +{event.monotonic_s - killed.get('at', event.monotonic_s):6.2f} s  {event.detail}")
    dead = [e for e in runner.events if e.kind == "declare_dead"]
    retry = [e for e in runner.events if e.kind == "retry"]
    if dead:
        print(f"detection latency: {dead[0].monotonic_s - killed['at']:.2f} s")
    if dead and retry:
        print(f"declared dead -> retry submitted (re-parenting or replacement, incl. sample transfer): "
              f"{retry[0].monotonic_s - dead[0].monotonic_s:.2f} s")
    rounds = sorted({r.round for r in records})
    print("round seconds: " + ", ".join(
        f"{n}: {next(r.round_s for r in records if r.round == n):.1f}" for n in rounds))
    last = [r for r in records if r.round == rounds[-1]]
    means = tier_means(last, list(runner.tree.tier_names))
    print("final accuracy: " + ", ".join(f"{tier} {100 * acc:.1f} %" for tier, acc in means.items()))


if __name__ == "__main__":
    main()
