"""Compares loss settings on the tiny tree with the in-process driver; prints a table.

Usage: .venv/bin/python benchmarks/settings.py [--rounds 4]
Each row is one run of jobs/configs/tiny.yaml with the overrides shown (seed 0).
"""
import argparse
import pathlib
import tempfile

from rayagg.config import load_config
from rayagg.driver import LocalRunner
from rayagg.learning.plan import load_data, make_plan
from rayagg.loop import execute

VARIANTS = [
    {"beta": 10.0, "teacher_mode": "train"},
    {"beta": 1.0, "teacher_mode": "train"},
    {"beta": 10.0, "teacher_mode": "eval"},
    {"beta": 1.0, "teacher_mode": "eval"},
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    base = load_config(pathlib.Path(__file__).parents[1] / "jobs/configs/tiny.yaml")
    print(f"| beta | teacher_mode | cloud after {args.rounds} rounds | edges | devices |")
    print("|---|---|---|---|---|")
    for variant in VARIANTS:
        config = base.with_changes(training={**variant, "rounds": args.rounds})
        dataset = load_data(config)
        records = execute(LocalRunner(make_plan(config, dataset), dataset),
                          pathlib.Path(tempfile.mkdtemp()))
        last = [r for r in records if r.round == args.rounds]
        mean = lambda tier: 100 * sum(r.accuracy for r in last if r.tier == tier) / len(
            [r for r in last if r.tier == tier])
        print(f"| {variant['beta']:g} | {variant['teacher_mode']} | {mean('cloud'):.1f} % "
              f"| {mean('edge'):.1f} % | {mean('device'):.1f} % |", flush=True)


if __name__ == "__main__":
    main()
