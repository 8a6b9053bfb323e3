"""Loses two whole machines of an emulated eight-machine cluster and prints what it cost.

Usage: .venv/bin/python benchmarks/machine_loss.py [CONFIG] [--cluster cluster/emulated-8.yaml]
       [--rounds 2] [--delay 20] [--losses 1,2]

Starts the machines of the cluster definition as raylets on this computer
(tests/emulated_cluster.py), runs CONFIG (default jobs/configs/paper-fmnist-emulated.yaml)
on them, and in each round of ``--losses`` removes, ``--delay`` seconds after the round's
first call went out, the machine carrying the most of the run's nodes (an edge site: an
edge host and a device host). For each loss it prints the nodes lost, the detection time
(machine removed -> the last of its nodes declared dead, and the first), the recovery
time (removed -> the round's retry submitted, and -> the retried round collected), and
the bridge samples the root holds against all the leaves', before and after. The target
(issue 25): every loss detected within interval x max_missed + 1 s, the run completed,
no bridge sample lost.
"""
import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from emulated_cluster import MachineLoss, emulated_cluster  # noqa: E402

from rayagg.config import load_config  # noqa: E402
from rayagg.core.events import Event, EventKind  # noqa: E402
from rayagg.learning.plan import make_plan  # noqa: E402
from rayagg.loop import execute  # noqa: E402
from rayagg.observe import Progress, RunObserver  # noqa: E402
from rayagg.runtime.runner import RayRunner  # noqa: E402


class Watch(RunObserver):
    """Every event, when each round was collected, and the root's bridge samples as the run
    started (round 0), as each round ended and as the run ended (-1)."""

    def __init__(self, runner: RayRunner):
        self.runner = runner
        self.events: list[Event] = []
        self.collected: dict[int, float] = {}
        self.root_samples: dict[int, int] = {}

    def run_started(self, run) -> None:
        self.root_samples[0] = self._root_count()

    def event(self, event: Event) -> None:
        self.events.append(event)

    def round_collected(self, result, records) -> None:
        self.collected[result.round] = time.monotonic()
        self.root_samples[result.round] = self._root_count()

    def run_finished(self, outcome) -> None:
        self.root_samples[-1] = self._root_count()
        self.final_dead = self.runner.dead

    def _root_count(self) -> int:
        root = self.runner.tree.root
        return self.runner.hosts.ask([root], "bridge_sample_count")[root]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default=str(ROOT / "jobs" / "configs" / "paper-fmnist-emulated.yaml"))
    parser.add_argument("--cluster", default=str(ROOT / "cluster" / "emulated-8.yaml"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--delay", type=float, default=20.0, help="seconds into the round to remove the machine")
    parser.add_argument("--losses", default="1,2", help="the rounds in which a machine is lost")
    args = parser.parse_args()
    config = load_config(args.config).with_rounds(args.rounds)
    plan = make_plan(config)
    total = sum(len(shard) for shard in plan.shards.values())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    out = pathlib.Path(tempfile.mkdtemp(prefix="rayagg-machine-loss-"))
    started = time.monotonic()
    with emulated_cluster(pathlib.Path(args.cluster)) as machines:
        print(f"{len(machines.nodes) + 1} machines up in {time.monotonic() - started:.1f} s; run dir {out}")
        loss = MachineLoss(machines, [int(r) for r in args.losses.split(",")], delay_s=args.delay)
        loss.runner = runner = RayRunner(plan, faults=loss.fault)
        watch = Watch(runner)
        execute(runner, out, observers=[Progress(), watch])
        loss.join()
    report(config, loss, watch, total, commit)


def report(config, loss: MachineLoss, watch: Watch, total: int, commit: str) -> None:
    supervision = config.supervision
    deadline_s = supervision.heartbeat_interval_s * supervision.max_missed + 1
    print(f"\ncommit {commit}; {config.name}; target: detected within {deadline_s:g} s, "
          f"no bridge sample lost ({total} in all)")
    ok = True
    for lost in loss.lost:
        declared = [e for e in watch.events if e.kind == EventKind.DECLARE_DEAD and e.node in lost.nodes
                    and e.monotonic_s >= lost.at]
        retry = next((e for e in watch.events if e.kind == EventKind.RETRY and e.monotonic_s >= lost.at), None)
        round_index = retry.round if retry else None
        edges = sum(1 for n in lost.nodes if config.tree.tiers[1].name in n)
        first = min((e.monotonic_s for e in declared), default=float("nan")) - lost.at
        last = max((e.monotonic_s for e in declared), default=float("nan")) - lost.at
        detected = len({e.node for e in declared}) == len(lost.nodes) and last <= deadline_s
        ok &= detected
        how = sorted({e.detail.split(": ")[-1].split(" (")[0] for e in declared})
        collected = watch.collected.get(round_index)
        print(f"- {lost.machine} (hosts {', '.join(sorted(lost.hosts))}) lost in round {round_index}: "
              f"{len(lost.nodes)} nodes ({edges} edges, {len(lost.nodes) - edges} devices)")
        print(f"    detected: all {len({e.node for e in declared})} declared dead {first:.2f} s (first) to "
              f"{last:.2f} s (last) after the machine went ({', '.join(how)}) "
              f"{'within' if detected else 'NOT within'} {deadline_s:g} s")
        if retry is not None:
            print(f"    recovery: retry submitted {retry.monotonic_s - lost.at:.2f} s after, round {round_index} "
                  f"collected {collected - lost.at:.2f} s after" if collected else "not collected")
        moved = [e for e in watch.events if e.kind == EventKind.REPARENT and lost.at <= e.monotonic_s
                 and (retry is None or e.monotonic_s <= retry.monotonic_s)]
        rejoined = [e for e in watch.events if e.kind == EventKind.REJOIN and e.node in lost.nodes]
        print(f"    orphans re-parented: {len(moved)}; devices re-joined later: {len(rejoined)}")
        before = watch.root_samples.get(round_index - 1 if round_index else 0)
        after = watch.root_samples.get(round_index)
        print(f"    bridge samples at the root: {before} before, {after} after (of {total})")
        ok &= after == total
    final = watch.root_samples.get(-1)
    ok &= final == total and not loss.rounds  # every loss asked for happened
    print(f"run completed: {len(watch.collected)} rounds; root holds {final} of {total} bridge samples "
          f"({total - (final or 0)} lost); dead at the end: {len(watch.final_dead)}")
    print("TARGET MET" if ok else "TARGET MISSED")


if __name__ == "__main__":
    main()
