"""Runs an elastic config as a user would and scales it live; prints what changed when.

Usage: .venv/bin/python benchmarks/elastic.py [CONFIG] [--rounds N] [--scale ROUND:DEVICES ...] [--out DIR]

Starts `rayagg run CONFIG --out DIR --rounds N`; each `--scale R:D` runs `rayagg scale DIR
--devices D` as soon as the run prints round R's line (the request then waits for the
round in flight to end). Afterwards it prints, from DIR's metrics and events: each
round's devices, seconds and accuracy per tier, and for each membership change its
reason, how long joining took and the time from the `rayagg scale` command to the new
devices being ready to train (the next round starts at once).
"""
import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

from rayagg.config import load_config
from rayagg.rundir.events import read_events
from rayagg.rundir.metrics import read_metrics, tier_means

ROOT = pathlib.Path(__file__).resolve().parents[1]
RAYAGG = pathlib.Path(sys.executable).parent / "rayagg"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default=str(ROOT / "jobs" / "configs" / "elastic.yaml"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scale", action="append", default=[], metavar="ROUND:DEVICES")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="rayagg-elastic-")) / "run"
    steps = [tuple(int(part) for part in step.split(":")) for step in args.scale]
    run = subprocess.Popen([str(RAYAGG), "run", args.config, "--out", str(out), "--rounds", str(args.rounds)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    requested = []
    for line in run.stdout:
        print(line, end="")
        for after, devices in steps:
            if line.startswith(f"round {after}/"):
                sent = time.time()
                done = subprocess.run([str(RAYAGG), "scale", str(out), "--devices", str(devices)],
                                      capture_output=True, text=True, timeout=120)
                requested.append((devices, sent))
                print(f"$ rayagg scale RUN_DIR --devices {devices}   ({time.time() - sent:.1f} s)\n"
                      f"{done.stdout}{done.stderr}", end="")
    if run.wait() != 0:
        sys.exit(f"rayagg run exited with {run.returncode}")
    report(out, requested)


def report(out: pathlib.Path, requested: list[tuple[int, float]]) -> None:
    records, events = read_metrics(out / "metrics.parquet"), read_events(out / "events.parquet")
    tiers = [tier.name for tier in load_config(out / "config.yaml").tree.tiers]
    print("\nround  devices  seconds  " + "  ".join(f"{tier:>6}" for tier in tiers))
    for round_index in sorted({r.round for r in records}):
        rows = [r for r in records if r.round == round_index]
        means = tier_means(rows, tiers)
        print(f"{round_index:>5}  {sum(r.tier == tiers[-1] for r in rows):>7}  {rows[0].round_s:>7.1f}  "
              + "  ".join(f"{100 * means[tier]:>5.1f}%" for tier in tiers))
    changes = [e for e in events if e.kind == "membership"]
    print("\nmembership changes (before round):")
    for event in changes:
        print(f"  {event.round + 1:>3}  {event.detail}")
    for devices, at in requested:
        index = next((i for i, e in enumerate(changes) if e.at >= at and f"asked for {devices}" in e.detail), None)
        if index is None:
            continue
        following = changes[index + 1:index + 2]
        joined = following[0] if following and "joined in" in following[0].detail else None
        ready = f"new devices ready to train {joined.at - at:.1f} s after the command" if joined else "no join"
        print(f"`rayagg scale --devices {devices}`: taken {changes[index].at - at:.1f} s after the command "
              f"(at the end of the round in flight); {ready}")
    print(f"run directory: {out}")


if __name__ == "__main__":
    main()
