"""One in-process run per setting changed, printing each tier's mean accuracy by round: the
probes behind docs/methods.md's "Why".

    python benchmarks/fedagg_probe.py jobs/configs/compare/fmnist-cnn-a1.yaml --rounds 12 --out DIR \\
        'base={}' 'lr0.005={"training": {"lr": 0.005}}' 'iid={"data": {"partition": "iid"}}'

Each NAME=CHANGES runs CONFIG with CHANGES (a JSON object of sections, as
``RunConfig.with_changes`` takes them) in DIR/NAME with the in-process driver.
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional

import click

from rayagg.config import load_config
from rayagg.driver import LocalRunner
from rayagg.learning.plan import load_data, make_plan
from rayagg.loop import execute


@click.command()
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("probes", nargs=-1, required=True)
@click.option("--rounds", type=int, default=None)
@click.option("--out", "out_dir", type=click.Path(), required=True)
def main(config_path: str, probes: tuple[str, ...], rounds: Optional[int], out_dir: str) -> None:
    base = load_config(config_path)
    if rounds is not None:
        base = base.with_rounds(rounds)
    for probe in probes:
        name, _, changes = probe.partition("=")
        config = base.with_changes(**json.loads(changes or "{}"))
        dataset = load_data(config)
        records = execute(LocalRunner(make_plan(config, dataset), dataset), pathlib.Path(out_dir) / name)
        click.echo(name)
        for tier in (t.name for t in config.tree.tiers):
            rows = [[r.accuracy for r in records if r.round == n and r.tier == tier]
                    for n in sorted({r.round for r in records})]
            if any(rows):
                click.echo(f"  {tier:<7}" + " ".join(f"{100 * sum(a) / len(a):5.1f}" for a in rows if a))


if __name__ == "__main__":
    main()
