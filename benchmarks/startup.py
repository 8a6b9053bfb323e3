"""Start-up of a config on a local Ray with ``data.source: driver`` and ``local``, in turns.

Usage: .venv/bin/python benchmarks/startup.py CONFIG [--repeats 3] [--data-only]
e.g.   .venv/bin/python benchmarks/startup.py jobs/configs/paper-fmnist.yaml

Start-up is measured as benchmarks/scale.py measures it: from Ray's start to the first
round submitted (hosts started with their data, bridge samples encoded, stored and sent
up, the round-0 checkpoint written); the run is then abandoned. The data set is loaded and
the plan made once, before any measurement, as `rayagg run` does both before Ray starts.
The two sources alternate so that a machine busy with other work slows both alike.
Prints each start-up, then the median of each source.

First, without Ray, it times what differs between the two on the host with the most
leaves (best of 5): under ``local`` the host loads the data set, cuts its shards and the
test split and converts them to floats; under ``driver`` it unpickles what the driver
shipped and converts it; and the driver cuts and pickles every host's object.
``--data-only`` stops there.
"""
import argparse
import pathlib
import pickle
import statistics
import tempfile
import time
from dataclasses import replace

from rayagg.config import load_config
from rayagg.core import packing
from rayagg.learning.plan import evaluation_split, load_data, local_data, make_plan, raw_shard, raw_test_split
from rayagg.loop import execute
from rayagg.observe import RunObserver
from rayagg.runtime.runner import RayRunner

SOURCES = ("driver", "local")


class StartedUp(Exception):
    """Raised by :class:`FirstRound` to end the run once start-up is over."""


class FirstRound(RunObserver):
    """Records when the first round is submitted, then ends the run."""

    def __init__(self):
        self.at = None

    def round_submitted(self, round_index, steps, attempt) -> None:
        self.at = time.monotonic()
        raise StartedUp()


def startup_s(plan, dataset) -> float:
    """Seconds from Ray's start to the first round of ``plan`` on a fresh local Ray."""
    first = FirstRound()
    started = time.monotonic()
    try:
        execute(RayRunner(plan, dataset=dataset), pathlib.Path(tempfile.mkdtemp(prefix="rayagg-startup-")),
                observers=[first])
    except StartedUp:
        pass
    return first.at - started


def best_s(work, repeats: int = 5) -> float:
    """The fewest seconds ``work()`` took in ``repeats`` tries."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return min(seconds)


def host_data(config, plan, dataset) -> None:
    """Prints what getting its data costs the biggest host each way, and the driver."""
    hosts = packing.pack(config)
    host = max(hosts, key=lambda h: len(h.nodes))
    leaves = [node for node in host.nodes if plan.is_leaf(node)]

    def read_own_copy():
        own = load_data(config)
        evaluation_split(plan, own), [local_data(plan, leaf, own) for leaf in leaves]

    def cut_and_pickle():
        test = pickle.dumps(raw_test_split(plan, dataset), protocol=5)
        return test, {h.name: pickle.dumps({leaf: raw_shard(plan, leaf, dataset) for leaf in h.nodes
                                            if plan.is_leaf(leaf)}, protocol=5) for h in hosts}

    test, shards = cut_and_pickle()

    def receive():
        pickle.loads(test).floats(), [shipped.local() for shipped in pickle.loads(shards[host.name]).values()]

    mib = lambda blob: len(blob) / 2**20
    print(f"{config.name}: host {host.name} ({len(leaves)} leaves): its shards {mib(shards[host.name]):.2f} MiB, "
          f"the test split {mib(test):.2f} MiB, every host's shards {sum(map(mib, shards.values())):.2f} MiB")
    print(f"{config.name}: the host's data, source local (load, cut, convert): {best_s(read_own_copy):.3f} s; "
          f"source driver (unpickle, convert): {best_s(receive):.3f} s; "
          f"the driver cutting and pickling every host's: {best_s(cut_and_pickle):.3f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-only", action="store_true", help="time the data alone; start no Ray")
    args = parser.parse_args()
    config = load_config(args.config)
    dataset = load_data(config)
    plan = make_plan(config, dataset)  # outside the measurement: the autoencoder may pretrain here
    host_data(config, plan, dataset)
    if args.data_only:
        return
    seconds = {source: [] for source in SOURCES}
    for repeat in range(args.repeats):
        for source in SOURCES:
            sourced = replace(plan, config=config.with_changes(data={"source": source}))
            seconds[source].append(startup_s(sourced, dataset))
            print(f"{config.name}: data.source {source}, try {repeat + 1}: start-up {seconds[source][-1]:.1f} s",
                  flush=True)
    for source in SOURCES:
        print(f"{config.name}: data.source {source}: median start-up {statistics.median(seconds[source]):.1f} s "
              f"over {args.repeats} ({', '.join(f'{s:.1f}' for s in seconds[source])})")


if __name__ == "__main__":
    main()
