"""A chaos run: random hosts of every tier, whole machines and the driver itself killed at
random times, and the run's invariants checked after every round.

Usage: PYTHONPATH=. .venv/bin/python benchmarks/chaos.py CONFIG --rounds N --fault-every S --seed K
       [--cluster cluster/emulated-8.yaml] [--reference-accuracy PCT --reference-seconds S] [--work DIR]

Starts the machines of ``--cluster`` as raylets on this computer (tests/emulated_cluster.py)
and trains CONFIG on them twice, each time with a driver process of its own
(benchmarks/chaos_driver.py, what `rayagg run --address` does): first without faults (the
reference; skipped when ``--reference-accuracy`` is given), then under chaos. Once the
chaos run has committed its first cut, faults come at random (seeded by ``--seed``; the
gaps are exponential with mean ``--fault-every`` seconds of training: the clock stops
while a driver starts), each of a kind drawn with weights 3 : 2 : 1: the host actor of a
random host of a random tier (the root's host included), a whole machine (its raylet and
every process on it, a fresh machine of its type joining in its place), or the driver
(SIGKILL; then the run is resumed from its run directory as a user would, `rayagg run
--resume RUN_DIR`). A driver that fails on its own is resumed the same way. After every
collected round the driver checks that the root holds every bridge sample of every live
or kept leaf, that the tree is valid and that metrics have a row per live node; after
every cut, and after every driver death, that the run directory verifies
(rayagg/core/invariants.py). The table: faults injected by kind, faults survived, rounds
retried, time lost, invariant violations, and the final cloud accuracy against the
reference.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rayagg.config import load_config  # noqa: E402
from rayagg.core.invariants import history_problems  # noqa: E402
from rayagg.errors import RayaggError  # noqa: E402
from rayagg.rundir.metrics import read_metrics  # noqa: E402

# How often each kind of fault is drawn: a driver's death costs a restart of every actor
# and the rounds in flight, so it comes a sixth of the time.
KINDS, WEIGHTS = ("host", "machine", "driver"), (3, 2, 1)
MAX_FAILED_STARTS = 5  # drivers in a row that died before training: give up


@dataclasses.dataclass
class Fault:
    kind: str  # host:<tier>, machine or driver
    target: str
    at: float  # time.time()
    driver: int  # which driver was running
    survived: Optional[bool] = None


class Driver:
    """The run's driver process, started again after each death: ``index`` counts them."""

    def __init__(self, run_dir: pathlib.Path, address: str, logs: pathlib.Path, config: str, rounds: int):
        self.run_dir, self.address, self.logs, self.config, self.rounds = run_dir, address, logs, config, rounds
        self.index, self.process, self.started_at = -1, None, 0.0

    def start(self, resume: bool) -> None:
        self.index += 1
        how = ["--resume"] if resume else ["--config", self.config]
        command = [sys.executable, str(ROOT / "benchmarks" / "chaos_driver.py"), str(self.run_dir), "--address",
                   self.address, "--log", str(self.log(self.index)), "--rounds", str(self.rounds), *how]
        self.started_at = time.time()
        self.process = subprocess.Popen(command, cwd=ROOT)

    def log(self, index: int) -> pathlib.Path:
        return self.logs / f"driver-{index}.jsonl"

    def records(self, index: Optional[int] = None) -> list[dict]:
        """The records driver ``index`` (default: the current one) wrote."""
        path = self.log(self.index if index is None else index)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]

    def all_records(self) -> list[dict]:
        return [dict(r, driver=i) for i in range(self.index + 1) for r in self.records(i)]

    def training(self) -> bool:
        return any(r["kind"] == "started" for r in self.records())

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


# ------------------------------------------------------------------ faults

def placement(driver: Driver) -> dict[str, str]:
    """host -> Ray node id, as the current driver last reported it."""
    placed = [r["placement"] for r in driver.records() if "placement" in r]
    return placed[-1] if placed else {}


def namespace(driver: Driver) -> str:
    return json.loads((driver.run_dir / "live.json").read_text())["namespace"]


def kill_host(driver: Driver, tier: str, rng: random.Random) -> Optional[str]:
    """Kills a random live host actor of ``tier``; its name, or None if none was found."""
    import ray

    hosts = sorted(h for h in placement(driver) if h.split("-")[0] == tier)
    rng.shuffle(hosts)
    for host in hosts:
        try:
            ray.kill(ray.get_actor(host, namespace=namespace(driver)), no_restart=True)
            return host
        except (ValueError, OSError, KeyError):
            continue  # restarting or gone: try the next
    return None


def kill_machine(machines, definition: dict, driver: Driver, rng: random.Random) -> Optional[str]:
    """Removes a random machine carrying one of the run's hosts and starts a fresh machine of
    the same type in its place (a real cluster's replacement); the machine's name."""
    from emulated_cluster import machine_types

    carrying = sorted({machines.of(node) for node in placement(driver).values()} - {None})
    if not carrying:
        return None
    machine = rng.choice(carrying)
    machines.remove(machine)
    kind = machine.rsplit("-", 1)[0]
    args = dict(machine_types(definition))[f"{kind}-0"]
    fresh = f"{kind}-{len(machines.nodes) + len(machines.removed)}"
    machines.nodes[fresh] = machines.cluster.add_node(wait=False, **args)
    return machine


def inject(kind: str, tiers: list[str], machines, definition: dict, driver: Driver,
           rng: random.Random) -> Optional[Fault]:
    """One fault of ``kind``; None when there was nothing to kill."""
    at = time.time()
    if kind == "host":
        tier = rng.choice(tiers)
        target, kind = kill_host(driver, tier, rng), f"host:{tier}"
    elif kind == "machine":
        target = kill_machine(machines, definition, driver, rng)
    else:
        driver.kill()
        target = f"driver-{driver.index}"
    if target is None:
        return None
    print(f"chaos: +{at - driver.started_at:.1f} s into driver-{driver.index}: killed {kind} {target}", flush=True)
    return Fault(kind, target, at, driver.index)


# ------------------------------------------------------------------ runs

def run_clean(driver: Driver, timeout_s: float) -> float:
    """Trains without faults; its wall seconds. RuntimeError if the driver failed."""
    driver.start(resume=False)
    try:
        rc = driver.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        driver.kill()
        raise RuntimeError(f"the reference run took over {timeout_s:.0f} s") from None
    if rc != 0:
        raise RuntimeError(f"the reference run's driver exited with {rc} (see its output above)")
    return time.time() - driver.started_at


def run_chaos(driver: Driver, args, machines, definition: dict, tiers: list[str]) -> tuple[list[Fault], list[dict]]:
    """Trains under chaos until the run is done; the faults and the drivers' deaths
    (each with the run-directory check made before the resume)."""
    rng = random.Random(args.seed)
    faults, deaths, failed_starts = [], [], 0
    driver.start(resume=False)
    next_at = None
    deadline = time.time() + args.timeout_s
    while time.time() < deadline:
        rc = driver.process.poll()
        if rc == 0:
            return faults, deaths
        if rc is not None:  # the driver failed on its own
            failed_starts = failed_starts + 1 if not driver.training() else 0
            if failed_starts >= MAX_FAILED_STARTS:
                raise RuntimeError(f"{failed_starts} drivers in a row died before training")
            deaths.append(resume_after_death(driver, rc, time.time()))
            next_at = None
            continue
        if next_at is None and driver.training() and (driver.run_dir / "state.json").exists():
            next_at = time.time() + rng.expovariate(1 / args.fault_every)  # the clock runs while training
        if next_at is None or time.time() < next_at:
            time.sleep(0.25)
            continue
        fault = inject(rng.choices(KINDS, WEIGHTS)[0], tiers, machines, definition, driver, rng)
        if fault is None:
            continue
        faults.append(fault)
        next_at = time.time() + rng.expovariate(1 / args.fault_every)
        if fault.kind == "driver":
            deaths.append(resume_after_death(driver, None, fault.at))
            next_at = None
    driver.kill()
    raise RuntimeError(f"the chaos run took over {args.timeout_s:.0f} s")


def resume_after_death(driver: Driver, rc: Optional[int], died: float) -> dict:
    """Checks the run directory as `rayagg status` would, then resumes it."""
    from chaos_driver import run_dir_problems

    problems = run_dir_problems(driver.run_dir)
    death = {"driver": driver.index, "rc": -9 if rc is None else rc, "at": died, "problems": problems}
    print(f"chaos: driver-{driver.index} gone (exit {death['rc']}); run directory "
          f"{'verifies' if not problems else problems}; resuming", flush=True)
    driver.start(resume=True)
    return death


# ------------------------------------------------------------------ report

def survived(faults: list[Fault], records: list[dict], deaths: list[dict]) -> None:
    """A fault is survived when a round is collected after it and no driver failed on its
    own in between (a driver killed by a later fault does not count against it): the
    runtime recovered, or for the driver the resume did, without a resume forced by the
    fault making the driver fail."""
    collected = sorted(r["t"] for r in records if r["kind"] == "round")
    failed = [d["at"] for d in deaths if d["rc"] != -9]
    for fault in faults:
        next_round = next((t for t in collected if t > fault.at), None)
        fault.survived = next_round is not None and not any(fault.at < at < next_round for at in failed)


def final_root_accuracy(run_dir: pathlib.Path, rounds: int) -> tuple[float, list[str]]:
    """The root's accuracy in the last round and the problems of the finished metrics."""
    rows = read_metrics(run_dir / "metrics.parquet")
    root = next(r for r in rows if r.round == rounds and not r.parent)  # the root has no parent
    return 100 * root.accuracy, history_problems([(r.round, r.node) for r in rows], rounds)


def report(args, faults: list[Fault], deaths: list[dict], driver: Driver, wall_s: float,
           reference: tuple[Optional[float], Optional[float]]) -> int:
    from chaos_driver import run_dir_problems

    records = driver.all_records()
    survived(faults, records, deaths)
    accuracy, final = final_root_accuracy(driver.run_dir, args.rounds)
    violations = [p for r in records for p in r.get("problems", [])] + [p for d in deaths for p in d["problems"]]
    violations += final + run_dir_problems(driver.run_dir)
    retries = [r for r in records if r["kind"] == "event" and r["event"] == "retry"]
    rounds = [r for r in records if r["kind"] == "round"]
    downtime = sum(min(r["t"] for r in driver.records(d["driver"] + 1) if r["kind"] == "started") - d["at"]
                   for d in deaths if driver.records(d["driver"] + 1))
    kinds = Counter(f.kind for f in faults)
    reference_accuracy, reference_s = reference
    rows = [
        ("commit", commit()),
        ("command", " ".join(sys.argv)),
        ("rounds; faults per round", f"{args.rounds}; {len(faults) / args.rounds:.2f}"),
        ("faults injected", f"{len(faults)} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})"),
        ("faults survived", f"{sum(f.survived for f in faults)} of {len(faults)}"),
        ("driver deaths, resumed", f"{len(deaths)} ({sum(1 for d in deaths if d['rc'] != -9)} on their own: "
                                   f"exit codes {[d['rc'] for d in deaths if d['rc'] != -9]})"),
        ("rounds retried (retry events)", f"{len(retries)}"),
        ("rounds collected again after a resume", f"{len(rounds) - args.rounds}"),
        ("unchecked root (died as its round ended)", f"{sum(1 for r in records if r['kind'] == 'unchecked')}"),
        ("wall time, chaos / fault-free", f"{wall_s:.0f} s / " + (f"{reference_s:.0f} s" if reference_s else "?")),
        ("time lost", f"{wall_s - reference_s:.0f} s" if reference_s else "?"),
        ("driver downtime (death to resumed run started)", f"{downtime:.0f} s"),
        ("invariant violations", f"{len(violations)}"),
        ("final cloud accuracy, chaos / fault-free", f"{accuracy:.1f} % / "
                                                     + (f"{reference_accuracy:.1f} %" if reference_accuracy else "?")),
    ]
    print("\n| | chaos |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    for problem in violations:
        print(f"VIOLATION: {problem}")
    close = reference_accuracy is None or abs(accuracy - reference_accuracy) <= 3
    ok = not violations and len(faults) >= args.rounds and close
    print("TARGET MET" if ok else "TARGET MISSED")
    return 0 if ok else 1


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


# ------------------------------------------------------------------ main

def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--fault-every", type=float, default=30.0, help="mean seconds between faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cluster", default=str(ROOT / "cluster" / "emulated-8.yaml"))
    parser.add_argument("--reference-accuracy", type=float, help="the fault-free run's final cloud accuracy, %%")
    parser.add_argument("--reference-seconds", type=float, help="the fault-free run's wall seconds")
    parser.add_argument("--work", type=pathlib.Path, help="where the run directories and logs go")
    parser.add_argument("--timeout-s", type=float, default=4 * 3600)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.fault_every <= 0:
        parser.error(f"--fault-every must be above 0 seconds, not {args.fault_every:g}")
    if not pathlib.Path(args.cluster).is_file():
        parser.error(f"--cluster {args.cluster}: no such file")
    try:
        args.tiers = [tier.name for tier in load_config(args.config).tree.tiers]
    except RayaggError as exc:
        parser.error(f"CONFIG: {exc}")
    return args


def main() -> int:
    import yaml
    from emulated_cluster import emulated_cluster

    args = parse()
    # SIGTERM unwinds like Ctrl-C, so the emulated machines and the driver are stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="rayagg-chaos-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    definition = yaml.safe_load(pathlib.Path(args.cluster).read_text())
    with emulated_cluster(definition) as machines:
        address = machines.cluster.address
        print(f"chaos: {len(machines.nodes) + 1} machines up at {address}; work dir {work}", flush=True)
        reference = (args.reference_accuracy, args.reference_seconds)
        if args.reference_accuracy is None:
            clean = Driver(work / "reference", address, work / "logs" / "reference", args.config, args.rounds)
            clean.logs.mkdir(exist_ok=True)
            seconds = run_clean(clean, args.timeout_s)
            reference = (final_root_accuracy(clean.run_dir, args.rounds)[0], seconds)
        driver = Driver(work / "chaos", address, work / "logs", args.config, args.rounds)
        started = time.time()
        try:
            faults, deaths = run_chaos(driver, args, machines, definition, args.tiers)
        finally:
            if driver.process is not None and driver.process.poll() is None:
                driver.kill()
        wall_s = time.time() - started
    return report(args, faults, deaths, driver, wall_s, reference)


if __name__ == "__main__":
    sys.exit(main())
