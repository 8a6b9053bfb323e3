"""``rayagg balance-test``: the same tree under each balancing policy, on the same seed.

Each (policy, seed) pair is a full Ray run of CONFIG with ``balance.policy`` (and
``training.seed``) replaced, written to its own run directory under OUT; Ray is started
once (or joined) for all of them. A result reads the run's own files: the median
round seconds, the median imbalance of the edges' busy seconds (max / mean), the
devices the policy moved and the cloud's accuracy after the last round.
"""
from __future__ import annotations

import json
import pathlib
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

from rayagg.config import BALANCE_POLICIES, RunConfig, load_config
from rayagg.core.events import EventKind
from rayagg.errors import ConfigError
from rayagg.observe import Progress
from rayagg.rundir.events import EVENTS_FILE, read_events
from rayagg.rundir.manifest import CONFIG_FILE
from rayagg.rundir.metrics import METRICS_FILE, balanced_tier, imbalance, read_metrics


@dataclass(frozen=True)
class PolicyResult:
    """One run under one policy (keys of ``--json``)."""

    policy: str
    seed: int
    rounds: int
    seconds_per_round: float  # median over the rounds
    imbalance: float  # median over the rounds of the edges' busy max / mean
    moves: int  # devices the policy moved between rounds
    cloud_accuracy: float  # the root's test accuracy after the last round
    run_dir: str


def parse_policies(text: str) -> list[str]:
    """``"none,least-busy"`` -> the names; ConfigError for an unknown one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BALANCE_POLICIES]
    if unknown or not names:
        raise ConfigError(f"--policies: unknown {', '.join(unknown) or 'nothing given'}; "
                          f"choose from {', '.join(BALANCE_POLICIES)}")
    return names


def compare(config: RunConfig, policies: Sequence[str], out: pathlib.Path, *, seeds: Sequence[int] = (0,),
            address: Optional[str] = None, echo: Callable[[str], None] = print) -> list[PolicyResult]:
    """Runs ``config`` under every policy and seed (one Ray for all); returns the results in
    that order. With MLflow tracking, one parent run holds a child per run."""
    import ray

    from rayagg.learning.plan import make_plan
    from rayagg.loop import execute
    from rayagg.rundir.directory import check_new_run_dir
    from rayagg.runtime.cluster import connect
    from rayagg.runtime.runner import RayRunner
    from rayagg.tracking import tracked_group

    runs = [(seed, policy, out / f"{policy}-seed{seed}") for seed in seeds for policy in policies]
    for *_, run_dir in runs:  # before any run starts, not after the first hour
        check_new_run_dir(run_dir)
    started = connect(address)
    results = []
    params = {"policies": ", ".join(policies), "seeds": ", ".join(map(str, seeds))}
    try:
        with tracked_group(config, out, "balance-test", params) as group:
            for seed, policy, run_dir in runs:
                run_config = config.with_changes(balance={"policy": policy}, training={"seed": seed})
                echo(f"rayagg: balance-test: {policy}, seed {seed} -> {run_dir}")
                runner = RayRunner(make_plan(run_config), address=address)
                execute(runner, run_dir, observers=[Progress(lambda line: echo(f"  {line}"))],
                        tracking_group=group)
                results.append(read_result(run_dir, policy, seed))
    finally:
        if started:
            ray.shutdown()
    return results


def read_result(run_dir: pathlib.Path, policy: str, seed: int) -> PolicyResult:
    """A finished run's figures, from its metrics.parquet and events.parquet."""
    records = read_metrics(run_dir / METRICS_FILE)
    events = read_events(run_dir / EVENTS_FILE) if (run_dir / EVENTS_FILE).is_file() else []
    rounds = sorted({r.round for r in records})
    by_round = {n: [r for r in records if r.round == n] for n in rounds}
    tiers = [tier.name for tier in load_config(run_dir / CONFIG_FILE).tree.tiers]
    edges, root = balanced_tier(tiers), tiers[0]
    ratios = [ratio for n in rounds if edges and (ratio := imbalance(by_round[n], edges)) is not None]
    last_root = [r.accuracy for r in by_round[rounds[-1]] if r.tier == root]
    return PolicyResult(policy, seed, len(rounds), statistics.median(by_round[n][0].round_s for n in rounds),
                        statistics.median(ratios) if ratios else 1.0,
                        sum(1 for e in events if e.kind == EventKind.REBALANCE), last_root[0], str(run_dir))


def table(results: Sequence[PolicyResult]) -> str:
    """Per policy: the median round seconds, imbalance, moves and final cloud accuracy,
    with the change in round time against ``none``; over several seeds, the mean and
    the range (min..max) of each."""
    policies = list(dict.fromkeys(r.policy for r in results))
    baseline = _mean([r.seconds_per_round for r in results if r.policy == "none"])
    lines = [f"{'policy':<14} {'s/round':>16} {'vs none':>8} {'imbalance':>16} {'moves':>6} "
             f"{'cloud acc %':>18}"]
    for policy in policies:
        mine = [r for r in results if r.policy == policy]
        seconds = _mean([r.seconds_per_round for r in mine])
        versus = f"{100 * (seconds / baseline - 1):+.0f}%" if baseline else "-"
        lines.append(f"{policy:<14} {_spread([r.seconds_per_round for r in mine], '.1f'):>16} {versus:>8} "
                     f"{_spread([r.imbalance for r in mine], '.2f'):>16} "
                     f"{_mean([r.moves for r in mine]):>6.1f} "
                     f"{_spread([100 * r.cloud_accuracy for r in mine], '.1f'):>18}")
    seeds = sorted({r.seed for r in results})
    lines.append(f"({results[0].rounds} rounds; seeds {', '.join(map(str, seeds))}"
                 f"{'; mean (min..max)' if len(seeds) > 1 else ''})")
    return "\n".join(lines)


def write_json(results: Sequence[PolicyResult], path: pathlib.Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _spread(values: Sequence[float], spec: str) -> str:
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(_mean(values), spec)} ({format(min(values), spec)}..{format(max(values), spec)})"
