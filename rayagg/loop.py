"""The round loop shared by both runtimes: train, evaluate, record, checkpoint, stop.

:func:`execute` drives a :class:`Runner` (the in-process driver, rayagg/driver.py, or the
Ray runtime, rayagg/runtime/runner.py) round by round, tells the run's observers
(rayagg/observe.py) what happens, and commits a consistent checkpoint after every round
that is due (rayagg/rundir/manifest.py). Stopping is rayagg/stopping.py.
"""
from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence

from rayagg.core.events import Event, EventKind
from rayagg.core.schedule import RoundResult
from rayagg.core.tree import Tree, training_leaves
from rayagg.core.wire import Link
from rayagg.observe import Observers, RunFiles, RunObserver, RunOutcome, RunStart
from rayagg.rundir.directory import check_new_run_dir
from rayagg.files import file_sha256, write_atomic
from rayagg.rundir.manifest import (CONFIG_FILE, RunState, checkpoint_file, manifest_key, prune_checkpoints,
                                    round_directory)
from rayagg.rundir.metrics import NodeMetrics
from rayagg.rundir.resume import earlier_events, earlier_records
from rayagg.stopping import Stopped, StopSignals, stop_within
from rayagg.storage import as_path
from rayagg.tracking import trackers

if TYPE_CHECKING:  # plan imports torch; the loop itself does not need it
    from rayagg.core.membership import Change
    from rayagg.learning.plan import Plan



class Runner(Protocol):
    """What a runtime offers the loop; see ``driver.LocalRunner`` and ``runtime.runner.RayRunner``.

    ``checkpoint`` is the manifest of the last complete checkpoint (set by ``start`` when
    resuming and by the loop after each cut): restarted nodes are restored from it.
    ``bridge_stores`` are the durable bridge-sample files written so far (at start, and
    when elastic devices joined); ``left`` the elastic devices that left.
    ``round_index`` is the last round submitted (or, before any, the one resumed after);
    ``rounds_pending`` the rounds submitted and not collected, oldest first (a failure's
    retry may drop later ones: they are submitted again); ``max_rounds_in_flight`` how
    many may be pending; ``tree_changing``: the tree may change before the next round,
    so the pending rounds must be collected first. ``start`` builds the tree and from
    then on tells ``observers`` what it does (a runtime may add observers of its own).
    """

    plan: Plan
    tree: Tree
    dead: frozenset
    left: frozenset
    round_index: int
    checkpoint: Optional[RunState]
    bridge_stores: list[pathlib.Path]
    rounds_pending: list[int]
    max_rounds_in_flight: int
    tree_changing: bool

    def connect(self) -> None: ...
    def start(self, run_dir: pathlib.Path, resume: Optional[RunState], observers: Observers) -> None: ...
    def plan_membership(self, round_index: int) -> Change: ...
    def change_membership(self, change: Change) -> None: ...
    def rebalance(self, round_index: int, busy_s: dict[str, float]) -> None: ...
    def submit_round(self, round_index: int, checkpoint_dir: Optional[pathlib.Path] = None) -> None: ...
    def collect_round(self) -> RoundResult: ...
    def save_checkpoints(self, directory: pathlib.Path) -> dict[str, str]: ...
    def close(self) -> None: ...


def execute(runner: Runner, out_dir: pathlib.Path, *, observers: Sequence[RunObserver] = (),
            resume: Optional[RunState] = None, stop: Optional[StopSignals] = None,
            tracking_group: Optional[Any] = None) -> list[NodeMetrics]:
    """Runs rounds up to the plan's ``training.rounds`` and writes RUN_DIR's files.

    A new run needs a new or empty ``out_dir`` (RunDirError otherwise; see
    ``rundir.directory.check_new_run_dir``); ``resume`` — the manifest
    ``rundir.resume.load_for_resume`` verified — continues the run in ``out_dir`` after its
    last checkpoint. RUN_DIR gets config.yaml (the resolved config); metrics.parquet and
    events.parquet after every round (so a crash keeps what was measured); a checkpoint
    once the bridge samples are stored (round 0), every ``supervision.checkpoint_every``
    rounds, at the end and when stopped; accuracy.png at the end or when stopped.
    ``observers`` watch the run (rayagg/observe.py) after RUN_DIR's own and the trackers the
    config's ``tracking`` names (rayagg/tracking/; ``tracking_group``: an MLflow parent
    run for a tool's runs). Returns every
    round's metrics; raises :class:`Stopped` when stopped. The runner is closed whatever
    happens, after every observer heard the end.
    """
    config = runner.plan.config  # one source of truth: what the nodes were built from
    out_dir = as_path(out_dir)  # a local path, or a URI on object storage (rayagg/storage.py)
    stop = stop or StopSignals()
    error: Optional[BaseException] = None
    everyone: Optional[Observers] = None
    try:
        # RUN_DIR is written only once the cluster answers: a run that never started
        # leaves nothing that would block the next try.
        runner.connect()
        files = _run_files(runner, out_dir, resume)
        everyone = Observers([files, *trackers(config, out_dir, tracking_group), *observers])
        write_atomic(out_dir / CONFIG_FILE, config.to_yaml().encode())
        with stop.handling_signals():
            runner.start(out_dir, resume, everyone)
            everyone.run_started(RunStart(config, out_dir, resume.round if resume else None))
            if resume is None:
                _checkpoint(runner, everyone, out_dir, 0)
            else:
                everyone.event(Event.now(resume.round, EventKind.RESUME, "", f"resumed after round {resume.round}"))
            dropped = _train(runner, everyone, out_dir, stop, files.records)
            if stop.requested:
                raise Stopped(stop.signum, abandoned=False, dropped=dropped)
    except BaseException as exc:
        error = _as_stop(exc, runner)
        if error is exc:
            raise
        raise error from None
    finally:
        try:
            if everyone is not None:
                everyone.run_finished(RunOutcome(files.records, error))
        finally:
            runner.close()
    return files.records


def _as_stop(exc: BaseException, runner: Runner) -> BaseException:
    """``exc``, or the stop it is or wraps with the round a resume continues after. A stop
    raised by a signal handler inside a C extension's call (a Ray wait) arrives wrapped,
    as a SystemError: it is still a stop."""
    stopped = stop_within(exc)
    if stopped is None:
        return exc
    stopped.checkpoint_round = runner.checkpoint.round if runner.checkpoint else None
    return stopped


def _run_files(runner: Runner, out_dir: pathlib.Path, resume: Optional[RunState]) -> RunFiles:
    """RUN_DIR's own observer; a resumed run keeps its history (checked before anything
    starts: a new run never writes over another)."""
    config = runner.plan.config
    if resume is None:
        check_new_run_dir(out_dir)
        files = RunFiles(out_dir, config)
    else:
        files = RunFiles(out_dir, config, earlier_records(out_dir, resume.round), earlier_events(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    return files


def _train(runner: Runner, observers: Observers, out_dir: pathlib.Path, stop: StopSignals,
           history: Sequence[NodeMetrics]) -> list[int]:
    """Submits rounds up to ``runner.max_rounds_in_flight`` ahead of the oldest uncollected
    one and collects them in order: metrics, then the round's checkpoint when one was
    due. Before a round that may change the tree (rebalancing, elastic devices, a
    pending repair) every round in flight is collected first. A stop request ends the
    submitting; once a round collected after it has committed its checkpoint, the later
    rounds in flight are abandoned (returned; closing the runner drops their work, which
    no cut lists). Without such a round they all finish and the last one is checkpointed.
    ``history``: the rounds a resumed run measured before."""
    config, last = runner.plan.config, runner.round_index
    # node -> busy seconds in the round collected last: rebalancing judges by them
    busy_s = {r.node: r.seconds for r in history if r.round == last}
    while True:
        while _may_submit(runner, stop):
            next_round = runner.round_index + 1
            if not runner.rounds_pending:
                _rebalance(runner, busy_s, next_round)
                _change_membership(runner, observers, out_dir, next_round)
            due = next_round % config.supervision.checkpoint_every == 0 or next_round == config.training.rounds
            runner.submit_round(next_round, round_directory(out_dir, next_round) if due else None)
        if not runner.rounds_pending:
            break
        result = runner.collect_round()
        rows = _round_metrics(runner, result)
        observers.round_collected(result, rows)
        busy_s, last = {r.node: r.seconds for r in rows}, result.round
        if result.checkpoints is not None:
            _checkpoint(runner, observers, out_dir, result.round, result.checkpoints)
            if stop.requested and runner.rounds_pending:
                return list(runner.rounds_pending)
    if stop.requested and runner.checkpoint is not None and runner.checkpoint.round < last:
        _checkpoint(runner, observers, out_dir, last)
    return []


def _may_submit(runner: Runner, stop: StopSignals) -> bool:
    """Whether the next round may be submitted now: one is left, there is room in flight,
    no stop was asked for, and the tree cannot change before it (or nothing is pending)."""
    return (runner.round_index < runner.plan.config.training.rounds
            and len(runner.rounds_pending) < runner.max_rounds_in_flight and not stop.requested
            and not (runner.rounds_pending and _changes_tree(runner, runner.round_index + 1)))


def _changes_tree(runner: Runner, round_index: int) -> bool:
    """Whether the tree may change before ``round_index``, so it must see settled rounds."""
    config = runner.plan.config
    return config.tree.elastic is not None or _rebalance_due(config, round_index) or runner.tree_changing


def _round_metrics(runner: Runner, result: RoundResult) -> list[NodeMetrics]:
    """One row per node evaluated, so the rows of a round are the nodes that were live in
    it (which elastic devices were active is read from them), with each node's load."""
    tree, dead, left = runner.tree, runner.dead, runner.left
    keep = runner.plan.config.supervision.keep_dead_leaf_samples
    shard_size = runner.plan.shard_sizes
    rows = []
    for node, scores in result.scores.items():
        samples = sum(shard_size[leaf] for leaf in training_leaves(tree, dead, node, keep, left))
        children = sum(1 for child in tree.children(node) if child not in dead)
        link = result.wire.get(node, Link())
        rows.append(NodeMetrics(result.round, node, tree.tier_name(node), scores.accuracy, scores.loss,
                                scores.busy_s, result.seconds, tree.parent_of[node] or "", children, samples,
                                max(0.0, result.seconds - scores.busy_s), link.up, link.down))
    return rows


def _rebalance(runner: Runner, busy_s: dict[str, float], round_index: int) -> None:
    """Every ``balance.every`` rounds, from round 2 on, the balancing policy may move
    devices between edges, judging by the busy seconds of the round just measured."""
    if _rebalance_due(runner.plan.config, round_index):
        runner.rebalance(round_index, busy_s)


def _rebalance_due(config, round_index: int) -> bool:
    balance = config.balance
    return balance.rebalances and round_index > 1 and (round_index - 1) % balance.every == 0


def _change_membership(runner: Runner, observers: Observers, out_dir: pathlib.Path, round_index: int) -> None:
    """Elastic devices join and leave before ``round_index``. Leavers are drained: they
    finished the last round, and a cut of it is written first if none was due, so each
    keeps its latest model for when it comes back."""
    change = runner.plan_membership(round_index)
    if change.leaves and runner.checkpoint is not None and runner.checkpoint.round < round_index - 1:
        _checkpoint(runner, observers, out_dir, round_index - 1)
    if change:
        runner.change_membership(change)


def _checkpoint(runner: Runner, observers: Observers, out_dir: pathlib.Path, round_index: int,
                saved: Optional[dict[str, str]] = None) -> None:
    """Commits a consistent cut of ``round_index`` by replacing state.json.

    ``saved`` (node -> SHA-256) are the checkpoints the round's own steps wrote, each
    right after that node's work in the round; without it the nodes write them now,
    which the loop asks only when no round is in flight. Either way every file holds
    that round's state. Dead nodes keep the checkpoint from before they died (this
    round's, when they saved it before dying).
    """
    previous = runner.checkpoint
    checkpoints: dict[str, str] = {}
    digests: dict[str, str] = {}
    if previous is not None:
        for node in runner.dead:
            if node in previous.checkpoints:
                relative = previous.checkpoints[node]
                checkpoints[node], digests[relative] = relative, previous.digests[relative]
    if round_index > 0:
        directory = round_directory(out_dir, round_index)
        for node, digest in (saved if saved is not None else runner.save_checkpoints(directory)).items():
            relative = manifest_key(checkpoint_file(directory, node), out_dir)
            # A node that died after saving this round keeps this file, not also its older
            # one: the pruning below deletes what ``checkpoints`` does not name.
            digests.pop(checkpoints.get(node, ""), None)
            checkpoints[node], digests[relative] = relative, digest
    for path in runner.bridge_stores:
        # A store never changes once written: hash it once, then carry its digest over.
        known = previous.digest_of(path, out_dir) if previous else None
        digests[manifest_key(path, out_dir)] = known or file_sha256(path)
    state = RunState(round_index, dict(runner.tree.parent_of), sorted(runner.dead), checkpoints, digests,
                     sorted(runner.left))
    state.save(out_dir)
    runner.checkpoint = state
    prune_checkpoints(out_dir, state)
    observers.checkpoint_committed(state)
