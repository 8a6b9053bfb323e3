"""The ``rayagg`` command line. Click stops here: everything below sees a RunConfig."""
from __future__ import annotations

import datetime
import os
import pathlib
import sys
from typing import Optional

import click

from rayagg.errors import RayaggError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """rayagg: Agglomerative Federated Learning (FedAgg) on a tree of Ray actors.

    A tree of nodes (e.g. cloud -> edges -> devices) trains models that grow tier by
    tier. Leaves encode their data once with a frozen autoencoder; codes and labels
    ("bridge samples") travel up the tree, and every parent/child pair distills both
    ways by exchanging logits. See README.md for the config format.
    """


@main.command()
@click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(dir_okay=False))
@click.option("--address", default=None, metavar="ADDR",
              help="Join this Ray cluster (e.g. 'auto' or 'HOST:6379'); without it a local "
                   "Ray is started and stopped at the end.")
@click.option("--rounds", type=int, default=None, help="Override training.rounds.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: runs/<config name>-<timestamp>).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True), default=None,
              metavar="RUN_DIR", help="Continue a crashed or interrupted run from its last "
                                      "checkpoint (CONFIG defaults to RUN_DIR/config.yaml).")
@click.option("--local", is_flag=True,
              help="Run the sequential in-process reference driver instead of Ray actors.")
def run(config_path: Optional[str], address: Optional[str], rounds: Optional[int],
        out_dir: Optional[str], resume_dir: Optional[str], local: bool) -> None:
    """Train the tree described by CONFIG and write RUN_DIR.

    RUN_DIR holds metrics.parquet (round, node, tier, accuracy, loss, seconds),
    events.parquet (deaths, moves, restarts, resumes), accuracy.png, config.yaml (the
    resolved config), state.json and checkpoints/<node>.pt. One line per round gives
    the root's accuracy and the mean of every other tier. Ctrl-C writes a final
    checkpoint; `rayagg run --resume RUN_DIR` continues from it.
    """
    from rayagg import config as config_module
    from rayagg.run import execute

    with _user_errors():
        if config_path is None and resume_dir is None:
            raise click.UsageError("give CONFIG, or --resume RUN_DIR")
        config = config_module.load_config(config_path or pathlib.Path(resume_dir) / "config.yaml")
        if rounds is not None:
            config = config.with_rounds(rounds)
        run_dir = pathlib.Path(resume_dir or out_dir or _default_run_dir(config.name))
        click.echo(f"rayagg: run {config.name!r} -> {run_dir}")
        runner = _make_runner(config, address, local)
        with click.progressbar(length=config.training.rounds, label="rounds",
                               file=sys.stderr) as bar:
            def report(line: str) -> None:
                click.echo(line)
                if line.startswith("round "):
                    bar.update(1)
            try:
                execute(runner, run_dir, echo=report, resume=resume_dir is not None)
            except KeyboardInterrupt:
                click.echo(f"rayagg: stopped; resume with: rayagg run --resume {run_dir}", err=True)
                sys.exit(130)
        click.echo(f"rayagg: done; metrics, plot and checkpoints in {run_dir}")


@main.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False, exists=True))
def status(run_dir: str) -> None:
    """Show a run's progress and what happened to its tree: the last checkpointed round,
    dead nodes, who moved where and why (from RUN_DIR/state.json and events.parquet)."""
    from rayagg.events import read_events
    from rayagg.run import RunState

    with _user_errors():
        path = pathlib.Path(run_dir)
        state = RunState.load(path)
        click.echo(f"last checkpointed round: {state.round}")
        click.echo(f"dead nodes: {', '.join(state.dead) or 'none'}")
        events = read_events(path / "events.parquet") if (path / "events.parquet").is_file() else []
        for event in events:
            when = datetime.datetime.fromtimestamp(event.at).strftime("%H:%M:%S")
            click.echo(f"{when}  round {event.round:>3}  {event.kind:<12} {event.detail}")
        if not events:
            click.echo("no events: no node failed")


@main.command("pretrain-autoencoder")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
def pretrain_autoencoder(config_path: str) -> None:
    """Pretrain the frozen bridge autoencoder for CONFIG's data set (cached; at most once).

    It trains on the public slice (data.public_samples), which is no device's shard, and
    stores the weights with their SHA-256 under autoencoder.cache_dir.
    """
    from rayagg.config import load_config
    from rayagg.plan import make_plan

    with _user_errors():
        plan = make_plan(load_config(config_path))
        click.echo(f"autoencoder ready: sha256 {plan.autoencoder_digest}")


@main.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
def check(config_path: str) -> None:
    """Validate CONFIG and print the tree's shape, without loading data or starting Ray."""
    from rayagg.config import load_config

    with _user_errors():
        config = load_config(config_path)
        for tier, count in zip(config.tree.tiers, config.tree.counts()):
            click.echo(f"{tier.name}: {count} x {tier.model}  {tier.resources.model_dump()}")


def _make_runner(config, address: Optional[str], local: bool):
    from rayagg.plan import load_data, make_plan

    dataset = load_data(config)
    plan = make_plan(config, dataset)
    if local:
        from rayagg.driver import LocalRunner

        return LocalRunner(plan, dataset)
    if address is not None:
        # Ray 2.60 clients joining by address need this before `import ray` (RAY_NOTES.md).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    from rayagg.runtime import RayRunner

    return RayRunner(plan, address=address)


def _default_run_dir(name: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"runs/{name}-{stamp}"


class _user_errors:
    """Turns a RayaggError into a one-line message and exit code 2, no traceback."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, RayaggError):
            click.echo(f"rayagg: error: {exc}", err=True)
            sys.exit(2)
        return False


if __name__ == "__main__":
    main()
