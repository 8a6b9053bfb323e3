"""Runs the demo and prints the demo table of docs/benchmarks.md, with the commit it was measured at.

Usage: .venv/bin/python benchmarks/demo_table.py [--config jobs/configs/demo.yaml] [--run-dir DIR]
Without --run-dir it runs `rayagg run CONFIG --out runs/demo-table --overwrite` on a local
Ray (the whole command timed) and then tabulates that run; with --run-dir it tabulates a
finished run. The run is deterministic for a seed, so the accuracies repeat exactly;
the seconds depend on the machine and what else runs on it.
"""
import argparse
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayagg.config import load_config  # noqa: E402
from rayagg.rundir.metrics import read_metrics, tier_means


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" with uncommitted changes" if git("status", "--porcelain", "--", "rayagg") else "")


def table(run_dir: pathlib.Path) -> list[str]:
    records = read_metrics(run_dir / "metrics.parquet")
    tiers = [tier.name for tier in load_config(run_dir / "config.yaml").tree.tiers]
    root, others = tiers[0], tiers[1:]
    lines = [f"| round | {root} | " + " | ".join(f"{t}s (mean)" for t in others) + " | seconds |",
             "|---" * (len(tiers) + 2) + "|"]
    for round_index in sorted({r.round for r in records}):
        rows = [r for r in records if r.round == round_index]
        means = tier_means(rows, tiers)
        cells = " | ".join(f"{100 * means[t]:.1f} %" for t in tiers)
        lines.append(f"| {round_index} | {cells} | {rows[0].round_s:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "jobs/configs/demo.yaml"))
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args()
    run_dir = pathlib.Path(args.run_dir or ROOT / "runs/demo-table")
    if args.run_dir is None:
        started = time.monotonic()
        subprocess.run([str(pathlib.Path(sys.executable).parent / "rayagg"), "run", args.config,
                        "--out", str(run_dir), "--overwrite"], check=True)
        print(f"whole command: {time.monotonic() - started:.0f} s")
    print(f"measured at commit {commit()} ({args.config}, {run_dir})")
    print("\n".join(table(run_dir)))


if __name__ == "__main__":
    main()
