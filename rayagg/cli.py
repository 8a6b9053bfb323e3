"""The ``rayagg`` command line. Click stops here: everything below sees a RunConfig."""
from __future__ import annotations

import datetime
import os
import pathlib
import sys
import time
from typing import Optional

import click

from rayagg.errors import ConfigError, RayaggError, RunDirError
from rayagg.jobs import CONFIG_ENV
from rayagg.live import LEAVES_LISTED

WATCH_EVERY_S = 2.0  # `rayagg status --watch`: the driver rewrites live.json about as often


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
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Run directory, new or empty (default: runs/<config name>-<timestamp>).")
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
        out_dir: Optional[str], overwrite: bool, resume_dir: Optional[str], local: bool,
        verbose: bool, config_from_env: bool) -> None:
    """Train the tree described by CONFIG and write RUN_DIR.

    RUN_DIR holds metrics.parquet (round, node, tier, accuracy, loss, seconds),
    events.parquet (deaths, moves, restarts, resumes), accuracy.png, config.yaml (the
    resolved config), state.json (the manifest of the last checkpoint) and
    checkpoints/round-<r>/<node>.pt. One line per round gives the root's accuracy and
    the mean of every other tier. An existing run in --out is an error unless
    --overwrite; `rayagg run --resume RUN_DIR` continues one.

    Ctrl-C or SIGTERM: the rounds in flight finish and the last is checkpointed, then
    the run stops; a second signal stops at once, keeping the last complete checkpoint. Exit
    codes: 0 done, 2 an error rayagg names (config, data, run files, a node, the
    cluster), 130 stopped by SIGINT, 143 stopped by SIGTERM, 1 an unexpected error.
    """
    from rayagg import config as config_module
    from rayagg import preflight, rundir
    from rayagg.run import Stopped, execute

    with _user_errors():
        if config_path is None and resume_dir is None and not config_from_env:
            raise click.UsageError("give CONFIG, or --resume RUN_DIR")
        if config_from_env and (config_path is not None or resume_dir is not None):
            raise click.UsageError("--config-from-env takes neither CONFIG nor --resume")
        if resume_dir is not None and (overwrite or out_dir is not None):
            raise click.UsageError("--resume continues RUN_DIR in place: it takes neither --out "
                                   "nor --overwrite")
        if resume_dir is not None and not pathlib.Path(resume_dir).is_dir():
            raise RayaggError(f"--resume {resume_dir}: no such run directory")
        config = _load_run_config(config_module, config_path, resume_dir, config_from_env)
        if rounds is not None:
            config = config.with_rounds(rounds)
        run_dir = config_module.absolute_path(resume_dir or out_dir or _default_run_dir(config))
        if resume_dir is None:
            rundir.check_new_run_dir(run_dir, overwrite)
        preflight.check_inputs(config)
        runner = _make_runner(config, address, local, verbose)
        # Everything a resume reads is verified before Ray starts or any file changes.
        state = rundir.load_for_resume(run_dir, runner.plan) if resume_dir else None
        if overwrite:
            rundir.clear_run_dir(run_dir)
        click.echo(f"rayagg: run {config.name!r} -> {run_dir}")
        _echo_emulation(config)
        # The bar only on a terminal: in a job's log or a pipe it would print just its label.
        with click.progressbar(length=config.training.rounds, label="rounds", file=sys.stderr,
                               hidden=not sys.stderr.isatty()) as bar:
            if state is not None:
                bar.update(state.round)

            def report(line: str) -> None:
                click.echo(line)
                if line.startswith("round "):
                    bar.update(1)
            try:
                execute(runner, run_dir, echo=report, resume=state)
            except Stopped as stopped:
                _explain_stop(stopped, run_dir)
                sys.exit(stopped.exit_code)
            except KeyboardInterrupt:  # before the signal handlers were in place
                click.echo("rayagg: interrupted while starting", err=True)
                sys.exit(130)
        click.echo(f"rayagg: done; metrics, plot and checkpoints in {run_dir}")


def _load_run_config(config_module, config_path: Optional[str], resume_dir: Optional[str],
                     from_env: bool = False):
    """CONFIG (or the YAML in $RAYAGG_CONFIG_YAML), or RUN_DIR/config.yaml when resuming; a
    CONFIG given with --resume must agree with the run's own config except where a resume
    may change it."""
    from rayagg.rundir import check_resumable_config

    if from_env:
        if CONFIG_ENV not in os.environ:
            raise ConfigError(f"--config-from-env: ${CONFIG_ENV} is not set (`rayagg submit` sets it)")
        return config_module.parse_config_text(os.environ[CONFIG_ENV], source=f"${CONFIG_ENV}")
    if resume_dir is None:
        return config_module.load_config(config_path)
    stored = config_module.load_config(pathlib.Path(resume_dir) / "config.yaml")
    if config_path is None:
        return stored
    given = config_module.load_config(config_path)
    check_resumable_config(stored, given)
    return given


def _explain_stop(stopped, run_dir: pathlib.Path) -> None:
    how = ("the rounds in flight were abandoned" if stopped.abandoned
           else "the rounds in flight were finished")
    if stopped.checkpoint_round is None:
        click.echo(f"rayagg: stopped by {stopped}; {how} before the first checkpoint: nothing to "
                   f"resume (start again with --out {run_dir} --overwrite)", err=True)
        return
    click.echo(f"rayagg: stopped by {stopped}; {how}; the last complete checkpoint is round "
               f"{stopped.checkpoint_round}; resume with: rayagg run --resume {run_dir}", err=True)


@main.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False, exists=True))
@click.option("--watch", is_flag=True,
              help=f"Redraw the live tree every {WATCH_EVERY_S:g} s until the run ends (Ctrl-C quits).")
@click.option("--all", "every_leaf", is_flag=True,
              help=f"List every leaf even past {LEAVES_LISTED} of them (else summed up per parent).")
def status(run_dir: str, watch: bool, every_leaf: bool) -> None:
    """Show a run's progress and what happened to its tree: the last checkpointed round,
    the rounds measured, dead nodes, devices that left, whether it is live and where, who
    joined, left or moved where and why (from RUN_DIR/state.json, live.json,
    metrics.parquet and events.parquet; every file is verified).

    While the run trains it starts with the tree as it is now, from RUN_DIR/live.json
    (the driver rewrites it every few seconds): each node's host actor and machine, the
    age of its last heartbeat, its parent, the bridge samples it trains on, the round it
    is in ("idle": done with every round in flight) and its last accuracy; dead, left,
    moved and joined nodes marked. It needs only RUN_DIR, not Ray.
    """
    from rayagg import rundir

    with _user_errors():
        path = pathlib.Path(run_dir)
        if not rundir.holds_run(path):
            raise RunDirError(rundir.missing_manifest(path))
        if watch:
            _watch(path, every_leaf)
        else:
            _echo_live(path, every_leaf)
        _echo_status(path)


def _watch(path: pathlib.Path, every_leaf: bool) -> None:
    """Redraws the live view until the run is no longer live or Ctrl-C."""
    try:
        while True:
            click.clear()
            click.echo(f"rayagg status {path} --watch (every {WATCH_EVERY_S:g} s; Ctrl-C quits)")
            if not _echo_live(path, every_leaf):
                return
            time.sleep(WATCH_EVERY_S)
    except KeyboardInterrupt:
        sys.exit(0)


def _echo_live(path: pathlib.Path, every_leaf: bool) -> bool:
    """Prints the live view of the run in ``path``; returns whether it is live."""
    from rayagg import live as live_view
    from rayagg import rundir

    record = rundir.read_live(path)
    if record is None:
        click.echo("not live: no run trains in this directory now")
        return False
    if rundir.driver_gone(record):
        click.echo(f"not live: its driver (pid {record.get('pid')}) is gone; it crashed or was killed "
                   f"(resume with: rayagg run --resume {path})")
        return False
    click.echo(f"live: driver pid {record.get('pid')} on {record.get('hostname')}, Ray at {record['address']}, "
               f"namespace {record['namespace']}")
    if "view" not in record:
        click.echo("  (starting: the tree is not up yet)")
        return True
    try:
        lines = live_view.render(record["view"], time.time(), every_leaf=every_leaf)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path / rundir.LIVE_FILE} is corrupt: {exc!r}") from exc
    for line in lines:
        click.echo(line)
    return True


def _echo_status(path: pathlib.Path) -> None:
    """The run's history: checkpoint, dead nodes, hosts, load of the last round, events."""
    from rayagg import packing, rundir
    from rayagg.metrics import read_metrics

    dead: list[str] = []
    tree, left = None, []
    if (path / rundir.STATE_FILE).is_file():
        state = rundir.RunState.load(path)
        dead, tree, left = state.dead, state.parent_of, state.left
        click.echo(f"last checkpointed round: {state.round}")
        failed = [node for node in state.dead if node not in state.left]
        click.echo(f"dead nodes: {', '.join(failed) or 'none'}")
        if state.left:
            click.echo(f"devices that left: {packing.describe_nodes(sorted(state.left, key=_index))}")
    else:
        click.echo(f"no checkpoint: {rundir.missing_manifest(path)}")
    _echo_hosts(path, dead, tree, left)
    if (path / "metrics.parquet").is_file():
        records = read_metrics(path / "metrics.parquet")
        measured = sorted({r.round for r in records})
        click.echo(f"rounds measured: {measured[-1] if measured else 0}")
        if measured:
            _echo_load([r for r in records if r.round == measured[-1]])
    events = rundir.earlier_events(path)
    for event in events:
        when = datetime.datetime.fromtimestamp(event.at).strftime("%H:%M:%S")
        click.echo(f"{when}  round {event.round:>3}  {event.kind:<12} {event.detail}")
    if not events:
        click.echo("no events: no node failed")


def _echo_load(records: list) -> None:
    """The edges' (the tier above the leaves) load in one round: children, bridge
    samples, busy and idle seconds, and the imbalance of their busy seconds."""
    from rayagg.metrics import balanced_tier, imbalance, tier_order

    tier = balanced_tier(tier_order(records))
    if tier is None:
        return
    edges = sorted((r for r in records if r.tier == tier), key=lambda r: _index(r.node))
    if not edges:
        return
    ratio = imbalance(edges, tier)
    shown = f"; imbalance {ratio:.2f} (max / mean busy)" if ratio is not None else ""
    click.echo(f"{tier} load in round {edges[0].round}{shown}:")
    for r in edges:
        click.echo(f"  {r.node:<10} {r.children:>4} children  {r.bridge_samples:>7} bridge samples  "
                   f"busy {r.seconds:7.1f} s  idle {r.idle_s:7.1f} s")


def _echo_hosts(run_dir: pathlib.Path, dead: list[str], tree: Optional[dict] = None,
                left: tuple = ()) -> None:
    """Which nodes each host actor carries, from the run's config.yaml (the packing is a
    function of the config): packed tiers host by host, the others in one line. ``tree``
    (the checkpoint's parent_of) tells elastic devices that never joined."""
    from rayagg import packing
    from rayagg.config import load_config

    if not (run_dir / "config.yaml").is_file():
        return
    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as exc:
        click.echo(f"hosts: unknown, config.yaml is not valid ({str(exc).splitlines()[0]})")
        return
    hosts = packing.pack(config)
    click.echo("hosts:")
    for tier in config.tree.tiers:
        ours = [host for host in hosts if host.tier == tier.name]
        if tier.nodes_per_actor == 1:
            click.echo(f"  {tier.name}: {len(ours)} host(s), one node each")
            continue
        for host in ours:
            notes = [f"{what}: {packing.describe_nodes(nodes)}" for what, nodes in [
                ("dead", [node for node in host.nodes if node in dead and node not in left]),
                ("left", [node for node in host.nodes if node in left]),
                ("never joined", [node for node in host.nodes
                                  if tier.elastic is not None and tree is not None and node not in tree])]
                if nodes]
            note = f"  ({'; '.join(notes)})" if notes else ""
            click.echo(f"  {host.name:<16} {packing.describe_nodes(host.nodes)}{note}")


@main.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False, exists=True))
@click.option("--devices", type=click.IntRange(min=0), default=None, help="Target count of active devices.")
@click.option("--add", type=click.IntRange(min=0), default=None, help="Devices to add.")
@click.option("--remove", type=click.IntRange(min=0), default=None, help="Devices to remove.")
def scale(run_dir: str, devices: Optional[int], add: Optional[int], remove: Optional[int]) -> None:
    """Change a live run's elastic device count at its next round boundary.

    Finds the run's Ray cluster and namespace in RUN_DIR/live.json, leaves the request with
    the run's supervisor, prints what will happen and exits (it does not wait). Joining
    devices take returning devices first (with their models), then unused shards; leaving
    ones go highest index first, drained after their last round. The count must lie within
    the leaf tier's elastic range; a run that finished or is not live is an error.
    """
    from rayagg.control import scale as scale_run

    with _user_errors():
        if [devices, add, remove].count(None) != 2:
            raise click.UsageError("give exactly one of --devices, --add or --remove")
        click.echo(f"rayagg: {scale_run(run_dir, devices=devices, add=add, remove=remove)}")


@main.command("balance-test")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--policies", default="none,round-robin,least-samples,least-busy,label-balance", show_default=True, help="Comma-separated balancing policies to run.")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Override training.rounds.")
@click.option("--seeds", default="0", show_default=True,
              help="Comma-separated training seeds; every policy runs with each.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the results as a JSON list to this file.")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Where the runs go, one directory each (default: runs/balance-test-<name>-<timestamp>).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (as for `run`).")
def balance_test(config_path: str, policies: str, rounds: Optional[int], seeds: str, json_path: Optional[str],
                 out_dir: Optional[str], address: Optional[str]) -> None:
    """Run CONFIG's tree under each balancing policy on the same seed and compare them.

    Prints, per policy: the median seconds per round (and the change against `none`),
    the median imbalance of the edges' busy seconds (max / mean; 1.0 is even), the
    devices moved between rounds and the cloud's final test accuracy. Each run is a
    full run directory under --out. With several --seeds, each figure is the mean and
    its range.
    """
    from rayagg import balance_bench, preflight
    from rayagg.config import absolute_path, load_config

    with _user_errors():
        names = balance_bench.parse_policies(policies)
        try:
            seed_list = [int(seed) for seed in seeds.split(",") if seed.strip()]
        except ValueError:
            raise click.BadParameter(f"not a comma-separated list of integers: {seeds!r}",
                                     param_hint="--seeds") from None
        config = load_config(config_path)
        if rounds is not None:
            config = config.with_rounds(rounds)
        preflight.check_inputs(config)
        out = absolute_path(out_dir or config.output.run_dir(f"balance-test-{config.name}", _stamp()))
        if address is not None:
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        results = balance_bench.compare(config, names, out, seeds=seed_list or [0], address=address,
                                        echo=click.echo)
        click.echo(balance_bench.table(results))
        if json_path is not None:
            balance_bench.write_json(results, pathlib.Path(json_path))
            click.echo(f"rayagg: results in {json_path}")


@main.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rounds of each run (overrides training.rounds).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures as a JSON object to this file.")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Where the two runs go, as local/ and ray/ (default: runs/bench-<name>-<timestamp>).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (as for `run`).")
def bench(config_path: str, rounds: int, json_path: Optional[str], out_dir: Optional[str],
          address: Optional[str]) -> None:
    """Run CONFIG on Ray and with the in-process driver; show where a round's time goes.

    Prints the median seconds per round of both runs and their ratio; the critical path
    (the longest chain of calls that must run one after another, from each call's
    measured time) and how close Ray's rounds came to it; the share of round time that
    is not torch work on that path; bridge samples trained on per second; peak memory;
    and the GFLOP/s achieved against this machine's matrix multiply. Both runs are full
    run directories under --out.
    """
    from rayagg import preflight
    from rayagg.config import absolute_path, load_config

    with _user_errors():
        config = load_config(config_path).with_rounds(rounds)
        preflight.check_inputs(config)
        out = absolute_path(out_dir or config.output.run_dir(f"bench-{config.name}", _stamp()))
        if address is not None:
            os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported
        from rayagg import bench as bench_module

        result = bench_module.bench(config, out, address=address, echo=click.echo)
        click.echo(bench_module.report(result))
        if json_path is not None:
            bench_module.write_json(result, pathlib.Path(json_path))
            click.echo(f"rayagg: figures in {json_path}")


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
    """Validate CONFIG and print the tree's shape, without starting Ray.

    Besides the file itself it builds each tier's model once (importing user factory
    modules) and runs a forward and backward pass on a dummy batch of the data set's
    shape, and checks the data set's files are where the config says.
    """
    from collections import Counter

    from rayagg import preflight
    from rayagg.config import load_config
    from rayagg.packing import pack

    with _user_errors():
        config = load_config(config_path)
        preflight.check_inputs(config)
        hosts = Counter(host.tier for host in pack(config))
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
        _echo_emulation(config)


def _echo_emulation(config) -> None:
    """Says so when the config emulates slower machines: left on by mistake, it would
    only show as slow rounds."""
    slowdown = config.emulation.slowdown
    if slowdown:
        slower = ", ".join(f"{name} x{factor:g}" for name, factor in slowdown.items())
        click.echo(f"rayagg: test bench: emulating slower machines ({slower}; emulation.slowdown)")


def _index(node: str) -> int:
    return int(node.rsplit("-", 1)[1])


def _make_runner(config, address: Optional[str], local: bool, verbose: bool = False):
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

    return RayRunner(plan, address=address, verbose=verbose)


def _default_run_dir(config) -> pathlib.Path:
    """``output.base_dir``/<name>-<timestamp>, absolute."""
    return config.output.run_dir(config.name, _stamp())


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


class _user_errors:
    """Turns a RayaggError into a one-line message and exit code 2, no traceback."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, RayaggError):
            click.echo(f"rayagg: error: {exc}", err=True)
            sys.exit(2)
        return False


from rayagg.jobs_cli import jobs_group, submit  # noqa: E402  (they use this module's helpers)

main.add_command(submit)
main.add_command(jobs_group)

if __name__ == "__main__":
    main()
