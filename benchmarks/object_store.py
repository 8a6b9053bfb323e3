"""A run with RUN_DIR on a local path against the same run with RUN_DIR on s3://, in turns.

Usage: .venv/bin/python benchmarks/object_store.py CONFIG [--repeats 2] [--rounds 3]
e.g.   .venv/bin/python benchmarks/object_store.py jobs/configs/tiny.yaml

The S3 endpoint is moto's standalone server (``moto_server``, installed by ``./dev.sh``'s
test extra) started here as its own process on a free port, with test credentials in the
environment (what the driver and the local Ray's workers read). Each run is a whole
``rayagg run`` on a fresh local Ray: start-up is from Ray's start to the first round
submitted (hosts started, bridge samples encoded, stored and sent up, the round-0
checkpoint written), round seconds are ``round_s`` of metrics.parquet (every round writes
metrics, events and, when due, node checkpoints and the manifest). The data set is loaded
and the plan made once, before any run. The two places alternate, so that a machine busy
with other work slows both alike. Prints each run, then the medians.
"""
import argparse
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from rayagg.config import load_config
from rayagg.learning.plan import load_data, make_plan
from rayagg.loop import execute
from rayagg.observe import RunObserver
from rayagg.rundir.metrics import read_metrics
from rayagg.runtime.runner import RayRunner
from rayagg.storage import as_path

BUCKET = "rayagg-bench"


class FirstRound(RunObserver):
    """When the first round was submitted."""

    def __init__(self):
        self.at = None

    def round_submitted(self, round_index, steps, attempt) -> None:
        self.at = self.at or time.monotonic()


def start_s3() -> subprocess.Popen:
    """moto_server on a free port, the environment pointed at it, the bucket created."""
    import pyarrow.fs as pafs

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(pathlib.Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while True:
        try:
            pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{port}", allow_bucket_creation=True,
                              connect_timeout=1).create_dir(BUCKET)
            return server
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def one_run(plan, dataset, out) -> tuple[float, list[float]]:
    """(start-up seconds, every round's seconds) of one run of ``plan`` into ``out``."""
    first = FirstRound()
    started = time.monotonic()
    execute(RayRunner(plan, dataset=dataset), out, observers=[first])
    rounds = {r.round: r.round_s for r in read_metrics(as_path(out) / "metrics.parquet")}
    return first.at - started, [rounds[n] for n in sorted(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = load_config(args.config).with_rounds(args.rounds)
    dataset = load_data(config)
    plan = make_plan(config, dataset)
    server = start_s3()
    results = {"local": [], "s3": []}
    try:
        for repeat in range(args.repeats):
            for place in results:
                out = (pathlib.Path(tempfile.mkdtemp(prefix="rayagg-store-bench-")) / "run" if place == "local"
                       else f"s3://{BUCKET}/{config.name}-{repeat}")
                startup, rounds = one_run(plan, dataset, out)
                results[place].append((startup, rounds))
                print(f"{place:>5}  start-up {startup:6.1f} s  rounds {' '.join(f'{s:.2f}' for s in rounds)} s",
                      flush=True)
    finally:
        server.terminate()
    for place, runs in results.items():
        startups = [s for s, _ in runs]
        rounds = [r for _, each in runs for r in each]
        print(f"{place:>5}  median start-up {statistics.median(startups):.1f} s, median round "
              f"{statistics.median(rounds):.2f} s ({len(rounds)} rounds)")


if __name__ == "__main__":
    main()
