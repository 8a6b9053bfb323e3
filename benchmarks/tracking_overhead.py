"""What tracking (TensorBoard and MLflow, rayagg/tracking/) costs a run's rounds.

Usage: .venv/bin/python benchmarks/tracking_overhead.py CONFIG [--rounds 3] [--pairs 1]
e.g.   .venv/bin/python benchmarks/tracking_overhead.py jobs/configs/demo.yaml --rounds 3

Two figures, on a fresh local Ray per run:
- the seconds the driver spends inside the trackers' callbacks (both trackers on, MLflow's
  default SQLite store), against the round seconds of the same run: the direct cost, since
  the trackers run in the driver's thread between rounds' bookkeeping;
- ``--pairs N``: N runs without tracking and N with, alternating, their median round
  seconds (noisy on a shared machine: rounds of one config vary by several percent).
Prints each run, then the totals.
"""
import argparse
import pathlib
import statistics
import tempfile
import time

from rayagg.config import load_config
from rayagg.learning.plan import load_data, make_plan
from rayagg.loop import execute
from rayagg.observe import RunObserver
from rayagg.rundir.metrics import read_metrics
from rayagg.runtime.runner import RayRunner
from rayagg.tracking import trackers


class Timed(RunObserver):
    """Forwards every callback to ``inner`` and adds up the seconds it took."""

    def __init__(self, inner):
        self.inner, self.by_call = inner, {}

    def __getattribute__(self, name):
        if name in ("run_started", "round_submitted", "step_finished", "waiting", "event", "round_collected",
                    "checkpoint_committed", "run_finished"):
            inner_call = getattr(object.__getattribute__(self, "inner"), name)

            def timed(*args):
                started = time.perf_counter()
                try:
                    return inner_call(*args)
                finally:
                    by_call = object.__getattribute__(self, "by_call")
                    by_call[name] = by_call.get(name, 0.0) + time.perf_counter() - started
            return timed
        return object.__getattribute__(self, name)


ONCE = ("run_started", "run_finished")  # opening the store and the writers; the artifacts at the end


def one_run(plan, dataset, tracking_config=None):
    """(every round's seconds, {callback: seconds inside the trackers} or None) of a run
    into a new folder."""
    out = pathlib.Path(tempfile.mkdtemp(prefix="rayagg-tracking-bench-")) / "run"
    timed = [Timed(t) for t in trackers(tracking_config, out, warn=print)] if tracking_config else []
    execute(RayRunner(plan, dataset=dataset), out, observers=timed)
    rounds = {r.round: r.round_s for r in read_metrics(out / "metrics.parquet")}
    inside = None
    if timed:
        inside = {}
        for t in timed:
            for name, seconds in t.by_call.items():
                inside[name] = inside.get(name, 0.0) + seconds
    return [rounds[n] for n in sorted(rounds)], inside


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=1)
    args = parser.parse_args()
    config = load_config(args.config).with_rounds(args.rounds)
    tracked = config.with_changes(tracking={"tensorboard": True, "mlflow": True})
    dataset = load_data(config)
    plan = make_plan(config, dataset)  # tracking off: the timed trackers below are the only ones
    results = {"off": [], "on": []}
    for _ in range(args.pairs):
        for mode in results:
            rounds, inside = one_run(plan, dataset, tracked if mode == "on" else None)
            results[mode].append((rounds, inside))
            spent = "" if inside is None else "; inside the trackers: " + ", ".join(
                f"{name} {seconds:.3f} s" for name, seconds in sorted(inside.items()))
            print(f"tracking {mode:>3}: rounds {' '.join(f'{s:.2f}' for s in rounds)} s{spent}", flush=True)
    for mode, runs in results.items():
        rounds = [r for each, _ in runs for r in each]
        print(f"tracking {mode:>3}: median round {statistics.median(rounds):.2f} s ({len(rounds)} rounds)")
    per_round = sum(s for _, i in results["on"] for name, s in i.items() if name not in ONCE)
    once = sum(s for _, i in results["on"] for name, s in i.items() if name in ONCE)
    total = sum(r for each, _ in results["on"] for r in each)
    print(f"inside the trackers during the rounds: {per_round:.3f} s of {total:.1f} s of rounds = "
          f"{per_round / total:.3%}; at start and end: {once / len(results['on']):.2f} s per run")


if __name__ == "__main__":
    main()
