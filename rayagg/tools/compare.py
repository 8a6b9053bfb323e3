"""``rayagg compare``: one tree trained by several methods (and variant configs) on the same seeds.

Each (seed, method or variant) is a full run of its own config, written to its own run
directory under OUT. Every config is built and every directory checked before the first
run starts, so an impossible combination (hierfavg over tiers with different models) or
a used directory is an error at once, not after an hour of training. A result reads only
the run's own files (config.yaml and metrics.parquet): the cloud's (the root tier's)
accuracy by round, each tier's final accuracy, the rounds to reach each target, the
median seconds per round and the bytes that crossed the tree's links; the report
(table, JSON, plot) is rayagg/tools/compare_report.py.
"""
from __future__ import annotations

import pathlib
import re
import statistics
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from rayagg.config import METHODS, RunConfig, load_config
from rayagg.errors import ConfigError, RunDirError
from rayagg.observe import Progress
from rayagg.rundir.manifest import CONFIG_FILE
from rayagg.rundir.metrics import METRICS_FILE, NodeMetrics, read_metrics, tier_means

# A variant's name ends a run directory's name and heads a table row: a plain word.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class PlannedRun:
    """One run to make: ``name`` is its method's or its variant's, ``config`` is final."""

    name: str
    seed: int
    config: RunConfig
    run_dir: pathlib.Path


@dataclass(frozen=True)
class RunResult:
    """One finished run (a row of compare.json). Accuracies are fractions; the cloud is the
    root tier, None where it has no rows (under ``local`` internal nodes are not evaluated)."""

    name: str  # the method, or the variant's name
    method: str
    seed: int
    rounds: int
    cloud_final: Optional[float]  # after the last round
    cloud_best: Optional[float]  # the best after any round
    tier_final: dict[str, Optional[float]]  # tier -> mean over its nodes after the last round
    rounds_to_target: dict[str, Optional[int]]  # target ("0.5") -> first round at or above it; None: never
    seconds_per_round: float  # median over the rounds
    bytes_per_round: float  # mean over the rounds of every link's bytes up and down
    bytes_up_per_round: float
    bytes_down_per_round: float
    cloud_by_round: list[Optional[float]]  # the cloud's accuracy after each round, in order
    run_dir: str


# ------------------------------------------------------------------ the command line's words

def parse_methods(text: str) -> list[str]:
    """``"fedagg,local"`` -> the names (none is allowed: variants alone); ConfigError for an
    unknown or repeated one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    _refuse_repeats("--methods", names)
    return names


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> the seeds; ConfigError unless they are distinct integers (at least one)."""
    try:
        seeds = [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: not a comma-separated list of integers: {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    _refuse_repeats("--seeds", seeds)
    return seeds


def parse_targets(text: str) -> list[float]:
    """``"0.5,0.6"`` -> the target accuracies; ConfigError unless each is a distinct number
    in (0, 1] (a fraction, as metrics.parquet holds accuracy)."""
    try:
        targets = [float(target) for target in text.split(",") if target.strip()]
    except ValueError:
        raise ConfigError(f"--targets: not a comma-separated list of numbers: {text!r}") from None
    outside = [t for t in targets if not 0 < t <= 1]
    if outside:
        raise ConfigError(f"--targets: {', '.join(f'{t:g}' for t in outside)} not in (0, 1]: a target "
                          "is a fraction of the test set (0.6 for 60%)")
    _refuse_repeats("--targets", targets)
    return targets


def parse_variants(texts: Sequence[str], overrides: Sequence[str] = ()) -> dict[str, RunConfig]:
    """``["cnn=tiny-cnn.yaml"]`` -> name -> its config, loaded with the ``--set KEY=VALUE``
    settings of ``overrides`` applied (as to CONFIG); ConfigError for a text
    that is not NAME=PATH, a name that is not a plain word, repeated or a method's, a
    missing file or a bad config."""
    variants: dict[str, RunConfig] = {}
    for text in texts:
        name, sep, path = text.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--variant {text!r}: expected NAME=CONFIG, e.g. cnn=tiny-cnn.yaml")
        if not _PLAIN_NAME.fullmatch(name):
            raise ConfigError(f"--variant {text!r}: the name must be a plain word (letters, digits, "
                              "_ . -): it names run directories")
        if name in METHODS or name in variants:
            used = "a method's name" if name in METHODS else "given twice"
            raise ConfigError(f"--variant {text!r}: the name {name!r} is {used}; choose another")
        if not pathlib.Path(path).is_file():
            raise ConfigError(f"--variant {text!r}: no such file: {path}")
        try:
            variants[name] = load_config(path, overrides)
        except ConfigError as exc:
            if not overrides:
                raise
            raise ConfigError(f"--variant {text!r}: {exc}") from exc  # which config --set failed in
    return variants


def _refuse_repeats(option: str, values: Sequence) -> None:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ConfigError(f"{option}: {', '.join(repeated)} given more than once")


# ------------------------------------------------------------------ planning and running

def plan_runs(config: RunConfig, methods: Sequence[str], seeds: Sequence[int], out: pathlib.Path, *,
              variants: Optional[Mapping[str, RunConfig]] = None,
              rounds: Optional[int] = None) -> list[PlannedRun]:
    """Every run, seed by seed: ``config`` under each method, then each variant as it is
    (only its seed, and ``rounds`` when given, replaced), each in OUT/<name>-seed<k>.

    Raises ConfigError naming the run for a combination the config refuses, RunDirError
    for a directory a new run may not use (one not empty, even a finished run's), and
    ConfigError when there is nothing to run."""
    from rayagg.rundir.directory import check_new_run_dir

    variants = variants or {}
    if not methods and not variants:
        raise ConfigError("nothing to compare: give --methods, --variant or both")
    runs = []
    for seed in seeds:
        training = {"seed": seed, **({"rounds": rounds} if rounds is not None else {})}
        for method in methods:
            runs.append(_planned(method, seed, out, config, method={"name": method}, training=training))
        for name, variant in variants.items():
            runs.append(_planned(name, seed, out, variant, training=training))
    for run in runs:  # before any run starts, not after the first hour
        # check_new_run_dir's own advice (--resume, --overwrite) is `rayagg run`'s, not ours
        if run.run_dir.is_dir() and any(run.run_dir.iterdir()):
            raise RunDirError(f"{run.run_dir} is not empty: compare makes every run in a new "
                              "directory; choose another --out")
        check_new_run_dir(run.run_dir)
    return runs


def _planned(name: str, seed: int, out: pathlib.Path, config: RunConfig, **changes: dict) -> PlannedRun:
    try:
        changed = config.with_changes(**changes)
    except ConfigError as exc:
        raise ConfigError(f"{name}, seed {seed}: {exc}") from exc
    return PlannedRun(name, seed, changed, out / f"{name}-seed{seed}")


def check_inputs(runs: Sequence[PlannedRun]) -> None:
    """The preflight checks (rayagg/learning/preflight.py) of every run before any starts:
    the data and its split for each (the split depends on the seed), the models once per
    tree (building them is the slow part, and neither seed nor method changes them)."""
    from rayagg.learning import preflight

    trees_checked = set()
    for run in runs:
        preflight.check_data(run.config)
        preflight.check_split(run.config)
        tree = (run.config.data.dataset, run.config.data.coarse_labels, run.config.tree.model_dump_json())
        if tree not in trees_checked:
            preflight.check_models(run.config)
            trees_checked.add(tree)


def run_all(runs: Sequence[PlannedRun], targets: Sequence[float] = (), *, address: Optional[str] = None,
            local: bool = False, echo: Callable[[str], None] = print) -> list[RunResult]:
    """Makes the runs one after another, with the in-process driver (``local``) or on one
    Ray for all (started, or joined at ``address``); returns their results in order. With
    MLflow tracking (the first run's ``tracking``), one parent run holds a child per run."""
    from rayagg.tracking import tracked_group

    params = {"runs": ", ".join(f"{run.name}-seed{run.seed}" for run in runs),
              "targets": ", ".join(f"{target:g}" for target in targets)}
    with tracked_group(runs[0].config, runs[0].run_dir.parent, "compare", params) as group:
        if local:
            return [_train(run, _local_runner, targets, echo, group) for run in runs]
        import ray

        from rayagg.runtime.cluster import connect

        started = connect(address)
        try:
            return [_train(run, lambda config: _ray_runner(config, address), targets, echo, group)
                    for run in runs]
        finally:
            if started:
                ray.shutdown()


def _train(run: PlannedRun, make_runner: Callable, targets: Sequence[float],
           echo: Callable[[str], None], group=None) -> RunResult:
    from rayagg.loop import execute

    echo(f"rayagg: compare: {run.name}, seed {run.seed} -> {run.run_dir}")
    execute(make_runner(run.config), run.run_dir, observers=[Progress(lambda line: echo(f"  {line}"))],
            tracking_group=group)
    return read_result(run.run_dir, run.name, targets)


def _local_runner(config: RunConfig):
    from rayagg.driver import LocalRunner
    from rayagg.learning.plan import load_data, make_plan

    dataset = load_data(config)
    return LocalRunner(make_plan(config, dataset), dataset)


def _ray_runner(config: RunConfig, address: Optional[str]):
    from rayagg.learning.plan import load_data, make_plan
    from rayagg.runtime.runner import RayRunner

    dataset = load_data(config)
    return RayRunner(make_plan(config, dataset), address=address, dataset=dataset)


# ------------------------------------------------------------------ one run's figures

def read_result(run_dir: pathlib.Path, name: str, targets: Sequence[float] = ()) -> RunResult:
    """A finished run's figures, from its config.yaml (method, seed, tiers) and metrics.parquet."""
    config = load_config(run_dir / CONFIG_FILE)
    tiers = [tier.name for tier in config.tree.tiers]
    return result_of(read_metrics(run_dir / METRICS_FILE), tiers, targets, name=name,
                     method=config.method.name, seed=config.training.seed, run_dir=str(run_dir))


def result_of(records: Sequence[NodeMetrics], tiers: Sequence[str], targets: Sequence[float], *,
              name: str, method: str, seed: int, run_dir: str) -> RunResult:
    """The figures of one run's metrics rows (``tiers`` root first)."""
    rounds = sorted({r.round for r in records})
    by_round = [[r for r in records if r.round == n] for n in rounds]
    cloud = [tier_means(rows, [tiers[0]]).get(tiers[0]) for rows in by_round]
    reached = [a for a in cloud if a is not None]
    last = tier_means(by_round[-1], list(tiers)) if by_round else {}
    up = [sum(r.bytes_up for r in rows) for rows in by_round]
    down = [sum(r.bytes_down for r in rows) for rows in by_round]
    return RunResult(
        name=name, method=method, seed=seed, rounds=len(rounds),
        cloud_final=cloud[-1] if cloud else None, cloud_best=max(reached) if reached else None,
        tier_final={tier: last.get(tier) for tier in tiers},
        rounds_to_target={target_key(t): _first_round(rounds, cloud, t) for t in targets},
        seconds_per_round=statistics.median(rows[0].round_s for rows in by_round) if by_round else 0.0,
        bytes_per_round=mean([u + d for u, d in zip(up, down)]), bytes_up_per_round=mean(up),
        bytes_down_per_round=mean(down), cloud_by_round=cloud, run_dir=run_dir)


def _first_round(rounds: Sequence[int], cloud: Sequence[Optional[float]], target: float) -> Optional[int]:
    return next((n for n, a in zip(rounds, cloud) if a is not None and a >= target), None)


def target_key(target: float) -> str:
    """How a target accuracy names its entry in ``RunResult.rounds_to_target``."""
    return f"{target:g}"


def mean(values: Sequence[float]) -> float:
    """The mean, 0.0 for no values."""
    return sum(values) / len(values) if values else 0.0
