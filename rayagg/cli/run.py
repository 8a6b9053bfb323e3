"""``rayagg run``, ``rayagg check`` and ``rayagg pretrain-autoencoder``."""
from __future__ import annotations

import contextlib
import os
import pathlib
import sys
from collections import Counter
from typing import Optional, Sequence

import click

from rayagg.cli.common import (default_run_dir, echo_emulation, echo_json, interrupted_while_starting,
                               json_option, prepare_to_join, set_option, user_errors)
from rayagg.client.jobs import CONFIG_ENV
from rayagg.config import RunConfig, absolute_path, load_config, parse_config_text
from rayagg.errors import ConfigError, RayaggError
from rayagg.observe import Progress, RunObserver, RunStart
from rayagg.tracking import describe as describe_tracking
from rayagg.storage import as_path


@click.command()
@click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(dir_okay=False))
@click.option("--address", default=None, metavar="ADDR",
              help="Join this Ray cluster (e.g. 'auto' or 'HOST:6379'); without it a local "
                   "Ray is started and stopped at the end.")
@click.option("--rounds", type=int, default=None, help="Override training.rounds (after any --set).")
@set_option(help="Set a config value, as if edited in CONFIG (with --resume: in the run's config, which "
                 "may then change only what a resume may): KEY a dotted path (an integer part indexes a "
                 "list, e.g. tree.tiers.2.count), VALUE read as YAML (0.01, true, null, [1, 2]). "
                 "Repeatable; a later one wins. Validated as the file is (docs/config.md).")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Run directory, new or empty: a path, or a URI such as s3://bucket/prefix/run "
                   "(default: output.base_dir/<config name>-<timestamp>, base_dir runs).")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in --out (its files are deleted first).")
@click.option("--resume", "resume_dir", type=click.Path(), default=None,
              metavar="RUN_DIR", help="Continue a stopped or crashed run after its last "
                                      "checkpoint (CONFIG defaults to RUN_DIR/config.yaml).")
@click.option("--local", is_flag=True,
              help="Run the sequential in-process reference driver instead of Ray actors.")
@click.option("--verbose", is_flag=True,
              help="Show Ray's own log lines (workers, raylets) as they come; by default they stay "
                   "in Ray's log files, linked from RUN_DIR/ray-logs.")
@click.option("--config-from-env", is_flag=True, hidden=True,
              help=f"Read the config's YAML from ${CONFIG_ENV} (how `rayagg submit` ships it).")
def run(config_path: Optional[str], address: Optional[str], rounds: Optional[int],
        overrides: tuple[str, ...], out_dir: Optional[str], overwrite: bool, resume_dir: Optional[str],
        local: bool, verbose: bool, config_from_env: bool) -> None:
    """Train the tree described by CONFIG and write RUN_DIR.

    RUN_DIR holds metrics.parquet (round, node, tier, accuracy, loss, seconds),
    events.parquet (deaths, moves, restarts, resumes), accuracy.png, config.yaml (the
    resolved config), state.json (the manifest of the last checkpoint) and
    checkpoints/round-<r>/<node>.pt. One line per round gives the root's accuracy and
    the mean of every other tier. An existing run in --out is an error unless
    --overwrite; `rayagg run --resume RUN_DIR` continues one. --set KEY=VALUE changes a
    config value as an edit of CONFIG would; config.yaml holds the result.

    Ctrl-C or SIGTERM: the oldest round in flight finishes and is checkpointed, a later
    one is abandoned (a resume trains it again), then the run stops; a second signal stops at once, keeping the last complete checkpoint. Exit
    codes: 0 done, 2 an error rayagg names (config, data, run files, a node, the
    cluster), 130 stopped by SIGINT, 143 stopped by SIGTERM, 1 an unexpected error.
    """
    from rayagg.learning import preflight
    from rayagg.rundir.directory import check_new_run_dir, clear_run_dir
    from rayagg.rundir.resume import load_for_resume

    with user_errors(), interrupted_while_starting():
        _check_usage(config_path, resume_dir, out_dir, overwrite, config_from_env)
        config = _load_run_config(config_path, resume_dir, config_from_env, overrides)
        if rounds is not None:
            config = config.with_rounds(rounds)
        run_dir = absolute_path(resume_dir or out_dir or default_run_dir(config))
        if resume_dir is None:
            check_new_run_dir(run_dir, overwrite)
        preflight.check_inputs(config)
        plan, dataset = _make_plan(config)
        # Everything a resume reads is verified before Ray is imported or any file changes.
        state = load_for_resume(run_dir, plan) if resume_dir else None
        runner = _make_runner(plan, dataset, address, local, verbose)
        del dataset  # the runner holds it as long as it needs it (on Ray: until shipped)
        if overwrite:
            clear_run_dir(run_dir)
        click.echo(f"rayagg: run {config.name!r} -> {run_dir}")
        echo_emulation(config)
        _train(runner, run_dir, state)
        click.echo(f"rayagg: done; metrics, plot and checkpoints in {run_dir}")


def _check_usage(config_path, resume_dir, out_dir, overwrite, config_from_env) -> None:
    if config_path is None and resume_dir is None and not config_from_env:
        raise click.UsageError("give CONFIG, or --resume RUN_DIR")
    if config_from_env and (config_path is not None or resume_dir is not None):
        raise click.UsageError("--config-from-env takes neither CONFIG nor --resume")
    if resume_dir is not None and (overwrite or out_dir is not None):
        raise click.UsageError("--resume continues RUN_DIR in place: it takes neither --out nor --overwrite")
    if resume_dir is not None and not as_path(resume_dir).is_dir():
        raise RayaggError(f"--resume {resume_dir}: no such run directory")


def _train(runner, run_dir: pathlib.Path, state) -> None:
    """Runs the rounds with the run's lines and, on a terminal, a progress bar; a stop
    exits with its signal's code and says how to resume."""
    from rayagg.loop import execute
    from rayagg.stopping import Stopped, StopSignals

    # The bar only on a terminal: in a job's log or a pipe it would print just its label.
    with click.progressbar(length=runner.plan.config.training.rounds, label="rounds", file=sys.stderr,
                           hidden=not sys.stderr.isatty()) as bar:
        try:
            execute(runner, run_dir, observers=[Progress(click.echo), ProgressBar(bar)], resume=state,
                    stop=StopSignals(click.echo))
        except Stopped as stopped:
            _explain_stop(stopped, run_dir)
            sys.exit(stopped.exit_code)


class ProgressBar(RunObserver):
    """Moves a click progress bar by the rounds collected (a resumed run starts where it was)."""

    def __init__(self, bar):
        self._bar = bar

    def run_started(self, run: RunStart) -> None:
        if run.resumed_after:
            self._bar.update(run.resumed_after)

    def round_collected(self, result, records: Sequence) -> None:
        self._bar.update(1)


def _load_run_config(config_path: Optional[str], resume_dir: Optional[str], from_env: bool = False,
                     overrides: Sequence[str] = ()) -> RunConfig:
    """CONFIG (or the YAML in $RAYAGG_CONFIG_YAML), or RUN_DIR/config.yaml when resuming,
    with the --set ``overrides`` applied; a CONFIG given with --resume, or the run's own
    config changed by --set, must agree with the run's own config except where a resume
    may change it."""
    from rayagg.rundir.manifest import CONFIG_FILE
    from rayagg.rundir.resume import check_resumable_config

    if from_env:
        if CONFIG_ENV not in os.environ:
            raise ConfigError(f"--config-from-env: ${CONFIG_ENV} is not set (`rayagg submit` sets it)")
        return parse_config_text(os.environ[CONFIG_ENV], source=f"${CONFIG_ENV}", overrides=overrides)
    if resume_dir is None:
        return load_config(config_path, overrides)
    stored = load_config(as_path(resume_dir) / CONFIG_FILE)
    if config_path is None and not overrides:
        return stored
    given = load_config(config_path or as_path(resume_dir) / CONFIG_FILE, overrides)
    try:
        check_resumable_config(stored, given)
    except ConfigError as exc:
        if not overrides:
            raise
        settings = " ".join(f"--set {setting}" for setting in overrides)
        raise ConfigError(f"with {settings}: {exc}") from None
    return given


def _explain_stop(stopped, run_dir: pathlib.Path) -> None:
    rounds = ", ".join(map(str, stopped.dropped))
    how = ("the rounds in flight were abandoned" if stopped.abandoned
           else f"round {rounds}, still in flight, was abandoned (a resume trains it again)"
           if len(stopped.dropped) == 1
           else f"rounds {rounds}, still in flight, were abandoned (a resume trains them again)"
           if stopped.dropped else "the rounds in flight were finished")
    if stopped.checkpoint_round is None:
        click.echo(f"rayagg: stopped by {stopped}; {how} before the first checkpoint: nothing to "
                   f"resume (start again with --out {run_dir} --overwrite)", err=True)
        return
    click.echo(f"rayagg: stopped by {stopped}; {how}; the last complete checkpoint is round "
               f"{stopped.checkpoint_round}; resume with: rayagg run --resume {run_dir}", err=True)


def _make_plan(config: RunConfig):
    """(the plan, the data set): the data loaded, split and encoded for the tree."""
    from rayagg.learning.plan import load_data, make_plan

    dataset = load_data(config)
    return make_plan(config, dataset), dataset


def _make_runner(plan, dataset, address: Optional[str], local: bool, verbose: bool = False):
    if local:
        from rayagg.driver import LocalRunner

        return LocalRunner(plan, dataset)
    prepare_to_join(address)
    from rayagg.runtime.runner import RayRunner

    return RayRunner(plan, address=address, verbose=verbose, dataset=dataset)


@click.command("pretrain-autoencoder")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
def pretrain_autoencoder(config_path: str) -> None:
    """Pretrain the frozen bridge autoencoder for CONFIG's data set (cached; at most once).

    It trains on the public slice (data.public_samples), which is no device's shard, and
    stores the weights with their SHA-256 under autoencoder.cache_dir.
    """
    from rayagg.learning.plan import make_plan

    with user_errors():
        plan = make_plan(load_config(config_path))
        click.echo(f"autoencoder ready: sha256 {plan.autoencoder_digest}")


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@set_option()
@json_option("the checked config's tree, method, data and balancing")
def check(config_path: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Validate CONFIG and print the tree's shape, without starting Ray.

    Besides the file itself it checks the data set's files are where the config says,
    draws the split of its training labels over the devices as a run will (a split a
    run would refuse is refused here, with the same message), and builds each tier's
    model once (importing user factory modules) for a forward and backward pass on a
    dummy batch of the data set's shape. --set KEY=VALUE checks CONFIG as changed.
    """
    from rayagg.core.packing import pack
    from rayagg.learning import preflight

    with user_errors():
        config = load_config(config_path, overrides)
        # With --json stdout holds the document alone: what a download prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            preflight.check_inputs(config)
        hosts = Counter(host.tier for host in pack(config))
        if as_json:
            echo_json(check_document(config, hosts))
            return
        for tier, count in zip(config.tree.tiers, config.tree.counts()):
            packed = hosts[tier.name]
            packing = "" if tier.nodes_per_actor == 1 else \
                f", {tier.nodes_per_actor} per host actor ({packed} host{'s' * (packed > 1)})"
            elastic = "" if tier.elastic is None else \
                f" (elastic: {tier.elastic.min_devices}..{tier.elastic.max_devices})"
            click.echo(f"{tier.name}: {count}{elastic} x {tier.model}{packing}  "
                       f"{tier.resources.model_dump()} per node")
        balance = config.balance
        moves = (f"rebalanced every {balance.every} round(s), up to {balance.max_moves} moves"
                 if balance.rebalances else "no moves between rounds")
        click.echo(f"balance: {balance.policy} ({moves})")
        click.echo(f"method: {describe_method(config.method)}")
        click.echo(f"data: {describe_data(config.data)}")
        tracking = describe_tracking(config)
        if tracking is not None:
            click.echo(f"tracking: {tracking}")
        echo_emulation(config)


def check_document(config: RunConfig, hosts: Counter) -> dict:
    """What `rayagg check --json` prints (docs/running.md, "Machine-readable output"):
    ``hosts`` is the host actors per tier."""
    balance = config.balance
    return {
        "name": config.name,
        "method": config.method.model_dump(mode="json"),
        "data": config.data.model_dump(mode="json"),
        "tiers": [{"name": tier.name, "count": count, "model": tier.model,
                   "nodes_per_actor": tier.nodes_per_actor, "hosts": hosts[tier.name],
                   "resources": tier.resources.model_dump(mode="json"),
                   "elastic": None if tier.elastic is None else tier.elastic.model_dump(mode="json")}
                  for tier, count in zip(config.tree.tiers, config.tree.counts())],
        "balance": {**balance.model_dump(mode="json"), "rebalances": balance.rebalances},
        "emulation": config.emulation.model_dump(mode="json"),
        "tracking": config.tracking.model_dump(mode="json"),
    }


def describe_data(data) -> str:
    """E.g. ``fashion-mnist, source driver (the driver loads it and ships each host its shards)``."""
    where = ("the driver loads it and ships each host its shards" if data.source == "driver"
             else "each host reads its own copy")
    return f"{data.dataset}, source {data.source} ({where})"


def describe_method(method) -> str:
    """E.g. ``hierfavg (kappa1 1 local epoch(s), kappa2 2 edge aggregations per round)``."""
    if method.name == "hierfavg":
        return (f"hierfavg ({method.kappa1} local epoch(s) per edge aggregation, {method.kappa2} edge "
                f"aggregation(s) per round)")
    if method.name == "local":
        return f"local ({method.kappa1} local epoch(s) per round, no exchange)"
    return "fedagg (bridge samples and logits)"
