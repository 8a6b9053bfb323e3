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
from typing import Optional

import ray

from rayagg.config import load_config
from rayagg.core.events import Event, EventKind
from rayagg.rundir.metrics import tier_means
from rayagg.learning.plan import make_plan
from rayagg.loop import execute
from rayagg.observe import Progress, RunObserver
from rayagg.runtime.runner import RayRunner


class KillAndWatch(RunObserver):
    """Kills ``node``'s actor ``delay_s`` after round ``round_index`` is first submitted
    (in a timer thread: the run goes on meanwhile) and keeps every event."""

    def __init__(self, runner: RayRunner, node: Optional[str], round_index: int, delay_s: float):
        self.runner, self.node, self.round_index, self.delay_s = runner, node, round_index, delay_s
        self.events: list[Event] = []
        self.killed_at: Optional[float] = None

    def round_submitted(self, round_index, steps, attempt) -> None:
        if self.node and round_index == self.round_index and attempt == 1:
            threading.Timer(self.delay_s, self._kill).start()

    def _kill(self) -> None:
        self.killed_at = time.monotonic()
        ray.kill(self.runner.actors[self.node], no_restart=True)

    def event(self, event: Event) -> None:
        self.events.append(event)


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
    watch = KillAndWatch(runner, args.node, args.round, args.delay)
    out = pathlib.Path(tempfile.mkdtemp(prefix="rayagg-failure-"))
    records = execute(runner, out, observers=[Progress(), watch])
    killed = watch.killed_at
    for event in watch.events:
        print(f"  +{event.monotonic_s - (killed or event.monotonic_s):6.2f} s  {event.detail}")
    dead = [e for e in watch.events if e.kind == EventKind.DECLARE_DEAD]
    retry = [e for e in watch.events if e.kind == EventKind.RETRY]
    if dead and killed is not None:
        print(f"detection latency: {dead[0].monotonic_s - killed:.2f} s")
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
