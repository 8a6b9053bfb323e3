"""The learning-rate sweep behind docs/methods.md: a baseline's cloud accuracy per lr.

    python benchmarks/lr_sweep.py CONFIG --method hierfavg --lrs 0.005,0.01,0.02,0.05 [--rounds N] --out DIR

Each lr is one in-process run (`rayagg run --local`) of CONFIG with ``method.name`` and
``training.lr`` replaced, written to DIR/<method>-lr<lr>; the table gives the root's
final and best accuracy and, for a method that scores only the devices, their mean.
"""
from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Optional

import click

from rayagg.config import load_config
from rayagg.rundir.metrics import METRICS_FILE, read_metrics


@click.command()
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--method", default="hierfavg")
@click.option("--lrs", default="0.005,0.01,0.02,0.05")
@click.option("--seed", type=int, default=0)
@click.option("--rounds", type=int, default=None, help="Override training.rounds.")
@click.option("--out", "out_dir", type=click.Path(), required=True)
def main(config_path: str, method: str, lrs: str, seed: int, rounds: Optional[int], out_dir: str) -> None:
    base = load_config(config_path)
    if rounds is not None:
        base = base.with_rounds(rounds)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for lr in [float(text) for text in lrs.split(",")]:
        config = base.with_changes(method={"name": method}, training={"lr": lr, "seed": seed})
        path = out / f"{method}-lr{lr}.yaml"
        path.write_text(config.to_yaml())
        run_dir = out / f"{method}-lr{lr}"
        subprocess.run([sys.executable, "-m", "rayagg", "run", str(path), "--local", "--out", str(run_dir)],
                       check=True, stdout=subprocess.DEVNULL)
        records = read_metrics(run_dir / METRICS_FILE)
        last = max(r.round for r in records)
        tier = base.tree.tiers[-1 if method == "local" else 0].name
        curve = [sum(r.accuracy for r in records if r.round == n and r.tier == tier)
                 / sum(1 for r in records if r.round == n and r.tier == tier) for n in range(1, last + 1)]
        rows.append((lr, tier, curve[-1], max(curve)))
        click.echo(f"lr {lr:<7} {tier} final {100 * curve[-1]:5.1f}%  best {100 * max(curve):5.1f}%")
    best = max(rows, key=lambda row: row[2])
    click.echo(f"best final: lr {best[0]} ({100 * best[2]:.1f}%)")


if __name__ == "__main__":
    main()
