"""How many Ray calls a FedAgg round takes, per config: one per step before batching, one
per host batch now (rayagg/core/schedule.py ``batch_steps``). Pure: no Ray, no data.

Usage: .venv/bin/python benchmarks/calls_per_round.py CONFIG [CONFIG ...]
e.g.   .venv/bin/python benchmarks/calls_per_round.py jobs/configs/demo.yaml jobs/configs/scale-1k.yaml

Counts a full round of the configured tree with every node live, each node evaluated
and checkpointed (what ``rayagg run`` submits on a checkpoint round), so the figures are
what the runtime sends, not an estimate: the bench prints the same counts measured
(``Ray calls N per round carried M steps``).
"""
import argparse

from rayagg.config import load_config
from rayagg.core.packing import home_hosts, pack
from rayagg.core.schedule import batch_steps, round_steps
from rayagg.learning.plan import make_tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    args = parser.parse_args()
    print(f"{'config':<40} {'nodes':>6} {'hosts':>6} {'steps':>7} {'calls':>6} {'steps/call':>10}")
    for path in args.configs:
        config = load_config(path)
        tree = make_tree(config)
        home = home_hosts(pack(config))
        steps = round_steps(tree, tree.leaves, scored=list(tree.nodes), save=True)
        calls = len(batch_steps(steps, home.__getitem__))
        print(f"{path:<40} {len(tree.nodes):>6} {len(set(home.values())):>6} {len(steps):>7} {calls:>6} "
              f"{len(steps) / calls:>10.1f}")


if __name__ == "__main__":
    main()
