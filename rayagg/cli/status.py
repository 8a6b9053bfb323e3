"""``rayagg status`` (a run's live tree and history, from RUN_DIR alone) and ``rayagg scale``."""
from __future__ import annotations

import datetime
import pathlib
import sys
import time
from typing import Optional

import click

from rayagg.cli.common import RunDirArgument, echo_json, json_option, user_errors
from rayagg.config import load_config
from rayagg.core import packing
from rayagg.errors import CheckpointError, ConfigError, RunDirError
from rayagg.nodes import by_index, describe_nodes, index_of
from rayagg.rundir.directory import DriverState, driver_state
from rayagg.rundir.live import LEAVES_LISTED, LIVE_FILE, read_live, render
from rayagg.rundir.manifest import CONFIG_FILE, STATE_FILE, RunState, holds_run, missing_manifest
from rayagg.rundir.metrics import (METRICS_FILE, NodeMetrics, balanced_tier, imbalance, read_metrics, tier_means,
                                   tier_order)
from rayagg.rundir.resume import CutCheck, earlier_events, verify_cut
from rayagg.storage import as_path

WATCH_EVERY_S = 2.0  # `rayagg status --watch`: the driver rewrites live.json about as often
# `rayagg status` checks the SHA-256 of the last checkpoint's files up to this many bytes in
# all (about 0.7 s of hashing at the 1.6 GB/s measured on the development machine, more
# from a cold disk); past it, that each is there with the size the manifest records.
HASHED_BYTES = 1 << 30


@click.command()
@click.argument("run_dir", metavar="RUN_DIR", type=RunDirArgument())
@click.option("--watch", is_flag=True,
              help=f"Redraw the live tree every {WATCH_EVERY_S:g} s until the run ends (Ctrl-C quits).")
@click.option("--all", "every_leaf", is_flag=True,
              help=f"List every leaf even past {LEAVES_LISTED} of them (else summed up per parent).")
@json_option("the run's state (not with --watch)")
def status(run_dir: str, watch: bool, every_leaf: bool, as_json: bool) -> None:
    """Show a run's progress and what happened to its tree: the last checkpointed round,
    the rounds measured, dead nodes, devices that left, whether it is live and where, who
    joined, left or moved where and why (from RUN_DIR/state.json, live.json,
    metrics.parquet and events.parquet; every file is verified).

    While the run trains it starts with the tree as it is now, from RUN_DIR/live.json
    (the driver rewrites it every few seconds): each node's host actor and machine, the
    age of its last heartbeat, its parent, the bridge samples it trains on, the round it
    is in ("idle": done with every round in flight) and its last accuracy; dead, left,
    moved and joined nodes marked. It needs only RUN_DIR, not Ray.

    The last checkpoint's files are verified (their SHA-256 up to 1 GiB in all, else
    their presence and sizes): a missing or damaged file, or a damaged metrics or events
    file, is named and the exit code is 2 (with --json, after the document is printed).
    """
    if watch and as_json:
        raise click.UsageError("--json prints the state once: it takes no --watch")
    with user_errors():
        path = as_path(run_dir)
        if not holds_run(path):
            raise RunDirError(missing_manifest(path))
        if as_json:
            document, damage = status_document(path)
            echo_json(document)
            if damage is not None:
                raise damage
            return
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
    """Prints the live view of the run in ``path``; returns whether it is live (or may be:
    a driver on another machine cannot be checked from here)."""
    record = read_live(path)
    if record is None:
        click.echo("not live: no run trains in this directory now")
        return False
    state, why = driver_state(record)
    if state == DriverState.GONE:
        click.echo(f"not live: {why}; it crashed or was killed (resume with: rayagg run --resume {path})")
        return False
    if state == DriverState.ELSEWHERE:
        click.echo(f"maybe live: {why}; Ray at {record['address']}, namespace {record['namespace']} "
                   "(the view's age shows whether it still writes)")
    else:
        click.echo(f"live: driver pid {record.get('pid')} on {record.get('hostname')}, Ray at {record['address']}, "
                   f"namespace {record['namespace']}")
    if "view" not in record:
        click.echo("  (starting: the tree is not up yet)")
        return True
    try:
        lines = render(record["view"], time.time(), every_leaf=every_leaf)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path / LIVE_FILE} is corrupt: {exc!r}") from exc
    for line in lines:
        click.echo(line)
    return True


def _echo_status(path: pathlib.Path) -> None:
    """The run's history: checkpoint (its files verified), dead nodes, hosts, load of the
    last round, events. A damaged checkpoint is said where it is shown, and after the
    rest is printed it is the command's error (exit 2)."""
    dead: list[str] = []
    tree, left, state, damage = None, [], None, None
    if (path / STATE_FILE).is_file():
        state = RunState.load(path)
        state, checked, damage = _verified(path, state)
        dead, tree, left = state.dead, state.parent_of, state.left
        click.echo(f"last checkpointed round: {state.round}{_verdict(checked, damage)}")
        failed = [node for node in state.dead if node not in state.left]
        click.echo(f"dead nodes: {', '.join(failed) or 'none'}")
        if state.left:
            click.echo(f"devices that left: {describe_nodes(by_index(state.left))}")
    else:
        click.echo(f"no checkpoint: {missing_manifest(path)}")
    _echo_hosts(path, dead, tree, left)
    if (path / METRICS_FILE).is_file():
        records = read_metrics(path / METRICS_FILE)
        measured = sorted({r.round for r in records})
        click.echo(f"rounds measured: {measured[-1] if measured else 0}")
        if measured:
            _echo_load([r for r in records if r.round == measured[-1]])
    events = earlier_events(path, state)
    for event in events:
        when = datetime.datetime.fromtimestamp(event.at).strftime("%H:%M:%S")
        click.echo(f"{when}  round {event.round:>3}  {event.kind:<12} {event.detail}")
    if not events:
        click.echo("no events: no node failed")
    if damage is not None:
        raise CheckpointError(f"the checkpoint of round {state.round} is damaged: {damage}; "
                              f"`rayagg run --resume {path}` would refuse it")


def status_document(path: pathlib.Path) -> tuple[dict, Optional[CheckpointError]]:
    """What `rayagg status --json` prints (docs/running.md, "Machine-readable output"), from
    the files the text reads, and the error for a damaged checkpoint (None when whole)."""
    config = None
    if (path / CONFIG_FILE).is_file():
        try:
            config = load_config(path / CONFIG_FILE)
        except ConfigError:
            config = None
    state, checked, damage = None, None, None
    if (path / STATE_FILE).is_file():
        state, checked, damage = _verified(path, RunState.load(path))
    records = read_metrics(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else []
    measured = max((r.round for r in records), default=0)
    last = [r for r in records if r.round == measured]
    names = [tier.name for tier in config.tree.tiers] if config is not None else \
        list(dict.fromkeys(r.tier for r in last))
    live = read_live(path)
    driver = None if live is None else driver_state(live)
    rounds = config.training.rounds if config is not None else None
    if driver is not None:
        run_state = {DriverState.LIVE: "running", DriverState.ELSEWHERE: "maybe-running",
                     DriverState.GONE: "crashed"}[driver[0]]
    elif state is not None and rounds is not None and state.round >= rounds:
        run_state = "done"
    else:
        run_state = "stopped"
    balanced = balanced_tier(tier_order(last))
    edges = sorted((r for r in last if r.tier == balanced), key=lambda r: index_of(r.node))
    document = {
        "run_dir": str(path),
        "name": config.name if config is not None else None,
        "state": run_state,
        "round": state.round if state is not None else None,
        "rounds": rounds,
        "rounds_measured": measured,
        "checkpoint": None if state is None else {
            "round": state.round, "files": checked.files if checked else None,
            "bytes": checked.size if checked else None, "hashed": bool(checked and checked.hashed),
            "damage": damage},
        "verified": checked is not None,
        "live": None if live is None else {
            "driver": driver[0].value, "why": driver[1], "pid": live.get("pid"),
            "hostname": live.get("hostname"), "address": live.get("address"),
            "namespace": live.get("namespace")},
        "tiers": {tier: {"accuracy": accuracy, "nodes": sum(1 for r in last if r.tier == tier)}
                  for tier, accuracy in tier_means(last, names).items()},
        "dead": [node for node in state.dead if node not in state.left] if state is not None else [],
        "left": list(state.left) if state is not None else [],
        "hosts": [] if config is None else [{"name": host.name, "tier": host.tier, "nodes": list(host.nodes)}
                                            for host in packing.pack(config)],
        "load": None if not edges else {
            "tier": balanced, "round": measured, "imbalance": imbalance(edges, balanced),
            "nodes": [{"node": r.node, "children": r.children, "bridge_samples": r.bridge_samples,
                       "busy_s": r.seconds, "idle_s": r.idle_s} for r in edges]},
        "events": [{"at": datetime.datetime.fromtimestamp(event.at).astimezone().isoformat(timespec="seconds"),
                    "round": event.round, "kind": event.kind, "node": event.node, "detail": event.detail}
                   for event in earlier_events(path, state)],
    }
    error = None if damage is None else CheckpointError(
        f"the checkpoint of round {state.round} is damaged: {damage}; `rayagg run --resume {path}` "
        "would refuse it")
    return document, error


def _verified(path: pathlib.Path, state: RunState) -> tuple[RunState, Optional[CutCheck], Optional[str]]:
    """(the manifest, what was checked, None) when the cut's files are whole, or (the
    manifest, None, why not). A live run may commit a newer cut and prune the files of
    this one while they are checked: a failure counts only if the manifest is unchanged."""
    for _ in range(3):
        try:
            return state, verify_cut(state, path, HASHED_BYTES), None
        except CheckpointError as exc:
            damage = str(exc)
        newer = RunState.load(path)
        if newer == state:
            break
        state = newer
    return state, None, damage


def _verdict(checked: Optional[CutCheck], damage: Optional[str]) -> str:
    if damage is not None:
        return f" (damaged: {damage})"
    if checked is None or not checked.files:
        return ""
    if checked.hashed:
        return f" (verified: the SHA-256 of its {checked.files} file(s))"
    sizes = "sizes checked" if checked.sized else "no sizes recorded"
    return (f" (its {checked.files} file(s) present, {sizes}, SHA-256 not: "
            f"{checked.size / 2**30:.1f} GiB; `rayagg run --resume` verifies it)")


def _echo_load(records: list[NodeMetrics]) -> None:
    """The edges' (the tier above the leaves) load in one round: children, bridge
    samples, busy and idle seconds, and the imbalance of their busy seconds."""
    tier = balanced_tier(tier_order(records))
    if tier is None:
        return
    edges = sorted((r for r in records if r.tier == tier), key=lambda r: index_of(r.node))
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
    if not (run_dir / CONFIG_FILE).is_file():
        return
    try:
        config = load_config(run_dir / CONFIG_FILE)
    except ConfigError as exc:
        click.echo(f"hosts: unknown, {CONFIG_FILE} is not valid ({str(exc).splitlines()[0]})")
        return
    hosts = packing.pack(config)
    click.echo("hosts:")
    for tier in config.tree.tiers:
        ours = [host for host in hosts if host.tier == tier.name]
        if tier.nodes_per_actor == 1:
            click.echo(f"  {tier.name}: {len(ours)} host(s), one node each")
            continue
        for host in ours:
            notes = [f"{what}: {describe_nodes(nodes)}" for what, nodes in [
                ("dead", [node for node in host.nodes if node in dead and node not in left]),
                ("left", [node for node in host.nodes if node in left]),
                ("never joined", [node for node in host.nodes
                                  if tier.elastic is not None and tree is not None and node not in tree])]
                if nodes]
            note = f"  ({'; '.join(notes)})" if notes else ""
            click.echo(f"  {host.name:<16} {describe_nodes(host.nodes)}{note}")


@click.command()
@click.argument("run_dir", metavar="RUN_DIR", type=RunDirArgument())
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
    from rayagg.client.scale import scale as scale_run

    with user_errors():
        if [devices, add, remove].count(None) != 2:
            raise click.UsageError("give exactly one of --devices, --add or --remove")
        click.echo(f"rayagg: {scale_run(run_dir, devices=devices, add=add, remove=remove)}")
