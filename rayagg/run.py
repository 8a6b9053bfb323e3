"""The round loop shared by both runtimes: train, evaluate, record, checkpoint, stop.

Stopping (SIGINT, SIGTERM, or :meth:`StopSignals.request` from code): the first
request lets the rounds in flight finish (one, or up to ``runtime.rounds_in_flight``
on Ray) — training, scoring, metrics — checkpoints the last, and stops; a second
request stops at once and keeps the last complete checkpoint. Either way a checkpoint
never mixes rounds (see ``rayagg.rundir``).
"""
from __future__ import annotations

import contextlib
import pathlib
import signal
import threading
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Protocol

from rayagg.events import Event, EventKind, write_events
from rayagg.files import file_sha256, write_atomic
from rayagg.metrics import NodeMetrics, plot_accuracy, summary_line, write_metrics
from rayagg.rundir import (RunState, check_new_run_dir, earlier_events, earlier_records,
                           manifest_key, prune_checkpoints, round_directory)
from rayagg.schedule import RoundResult
from rayagg.tree import Tree, training_leaves

if TYPE_CHECKING:  # plan imports torch; the loop itself does not need it
    from rayagg.membership import Change
    from rayagg.plan import Plan


class Runner(Protocol):
    """What a runtime offers the loop; see ``driver.LocalRunner`` and ``runtime.RayRunner``.

    ``checkpoint`` is the manifest of the last complete checkpoint (set by ``start`` when
    resuming and by the loop after each cut): restarted nodes are restored from it.
    ``bridge_stores`` are the durable bridge-sample files written so far (at start, and
    when elastic devices joined); ``left`` the elastic devices that left.
    ``round_index`` is the last round submitted (or, before any, the one resumed after);
    ``rounds_pending`` the rounds submitted and not collected, oldest first (a failure's
    retry may drop later ones: they are submitted again); ``max_rounds_in_flight`` how
    many may be pending; ``tree_changing``: the tree may change before the next round,
    so the pending rounds must be collected first.
    """

    plan: Plan
    tree: Tree
    dead: frozenset
    left: frozenset
    events: list[Event]
    round_index: int
    checkpoint: Optional[RunState]
    bridge_stores: list[pathlib.Path]
    rounds_pending: list[int]
    max_rounds_in_flight: int
    tree_changing: bool

    def connect(self) -> None: ...
    def start(self, run_dir: pathlib.Path, resume: Optional[RunState] = None) -> None: ...
    def plan_membership(self, round_index: int) -> Change: ...
    def change_membership(self, change: Change) -> None: ...
    def rebalance(self, round_index: int, busy_s: dict[str, float]) -> None: ...
    def submit_round(self, round_index: int, checkpoint_dir: Optional[pathlib.Path] = None) -> None: ...
    def collect_round(self) -> RoundResult: ...
    def report_round(self, records: list[NodeMetrics], result: RoundResult) -> None: ...
    def bridge_sample_counts(self) -> dict[str, int]: ...
    def save_checkpoints(self, directory: pathlib.Path) -> dict[str, str]: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------------- stopping

class Stopped(BaseException):
    """The run stopped on request. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows a stop raised by a signal handler.

    ``abandoned``: the rounds in flight were dropped (second request) rather than finished
    and checkpointed; ``checkpoint_round``: the round a resume continues after (None:
    there is no checkpoint). The exit code is 128 + the signal number, as shells report
    a process ended by that signal (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, abandoned: bool):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.abandoned = signum, abandoned
        self.checkpoint_round: Optional[int] = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Stop requests for one run, from SIGINT/SIGTERM or from code (tests, tools)."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.signum: Optional[int] = None
        self._echo = echo

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGINT) -> None:
        """First request: stop after the rounds in flight. Second: raise :class:`Stopped` now."""
        if self.signum is not None:
            raise Stopped(signum, abandoned=True)
        self.signum = signum
        self._echo(f"rayagg: {signal.Signals(signum).name}: stopping after the rounds in flight "
                   "are trained, scored and checkpointed; signal again to stop at once "
                   "(the last complete checkpoint is kept)")

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Routes SIGINT and SIGTERM to :meth:`request` (main thread only: Python allows
        handlers nowhere else), restoring the previous handlers afterwards. Enter it after
        ``ray.init``, which installs a SIGTERM handler of its own that exits at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, lambda signum, frame: self.request(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# ---------------------------------------------------------------------- the loop

def execute(runner: Runner, out_dir: pathlib.Path, echo: Callable[[str], None] = print,
            resume: Optional[RunState] = None, stop: Optional[StopSignals] = None) -> list[NodeMetrics]:
    """Runs rounds up to the plan's ``training.rounds`` and writes RUN_DIR's files.

    A new run needs a new or empty ``out_dir`` (RunDirError otherwise; see
    ``rundir.check_new_run_dir``); ``resume`` — the manifest ``rundir.load_for_resume``
    verified — continues the run in ``out_dir`` after its last checkpoint. RUN_DIR gets
    config.yaml (the resolved config); metrics.parquet and events.parquet after every
    round (so a crash keeps what was measured); a checkpoint once the bridge samples are
    stored (round 0), every ``supervision.checkpoint_every`` rounds, at the end and when
    stopped; accuracy.png at the end or when stopped. Returns every round's metrics;
    raises :class:`Stopped` when stopped. The runner is closed whatever happens.
    """
    config = runner.plan.config  # one source of truth: what the nodes were built from
    stop = stop or StopSignals(echo)
    if resume is None:
        check_new_run_dir(out_dir)
        records: list[NodeMetrics] = []
    else:
        records = earlier_records(out_dir, resume.round)
        runner.events[:0] = earlier_events(out_dir)  # the run's history is kept, not replaced
    report = _EventReport(runner, out_dir, echo)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "config.yaml", config.to_yaml().encode())
    try:
        runner.connect()
        with stop.handling_signals():
            runner.start(out_dir, resume)
            if resume is None:
                _checkpoint(runner, out_dir, 0)
            else:
                runner.events.append(Event.now(resume.round, EventKind.RESUME, "",
                                               f"resumed after round {resume.round}"))
            _train(runner, out_dir, echo, stop, records, report)
            if records:
                plot_accuracy(records, list(runner.tree.tier_names), out_dir / "accuracy.png", runner.events)
            if stop.requested:
                raise Stopped(stop.signum, abandoned=False)
    except Stopped as stopped:
        stopped.checkpoint_round = runner.checkpoint.round if runner.checkpoint else None
        raise
    finally:
        report()
        runner.close()
    return records


def _train(runner: Runner, out_dir: pathlib.Path, echo: Callable[[str], None], stop: StopSignals,
           records: list[NodeMetrics], report: "_EventReport") -> None:
    """Submits rounds up to ``runner.max_rounds_in_flight`` ahead of the oldest uncollected
    one and collects them in order: metrics, the round's line, its checkpoint when one
    was due. Before a round that may change the tree (rebalancing, elastic devices, a
    pending repair) every round in flight is collected first. A stop request ends the
    submitting; the rounds in flight finish and the last one is checkpointed."""
    config = runner.plan.config
    tier_names, rounds = list(runner.tree.tier_names), config.training.rounds
    counted = tier_names[-1] if config.tree.elastic is not None else ""
    while True:
        while (runner.round_index < rounds and len(runner.rounds_pending) < runner.max_rounds_in_flight
               and not stop.requested
               and not (runner.rounds_pending and _changes_tree(runner, runner.round_index + 1))):
            next_round = runner.round_index + 1
            if not runner.rounds_pending:
                _rebalance(runner, records, next_round)
                _change_membership(runner, out_dir, next_round)
            due = next_round % config.supervision.checkpoint_every == 0 or next_round == rounds
            runner.submit_round(next_round, round_directory(out_dir, next_round) if due else None)
        if not runner.rounds_pending:
            break
        result = runner.collect_round()
        this_round = _round_metrics(runner, result)
        records += this_round
        write_metrics(records, out_dir / "metrics.parquet")
        report()
        runner.report_round(this_round, result)
        echo(summary_line(result.round, rounds, this_round, tier_names, counted))
        if result.checkpoints is not None:
            _checkpoint(runner, out_dir, result.round, result.checkpoints)
    last = records[-1].round if records else 0
    if stop.requested and runner.checkpoint is not None and runner.checkpoint.round < last:
        _checkpoint(runner, out_dir, last)


def _changes_tree(runner: Runner, round_index: int) -> bool:
    """Whether the tree may change before ``round_index``, so it must see settled rounds."""
    config = runner.plan.config
    return config.tree.elastic is not None or _rebalance_due(config, round_index) or runner.tree_changing


def _round_metrics(runner: Runner, result: RoundResult) -> list[NodeMetrics]:
    """One row per node evaluated, so the rows of a round are the nodes that were live in
    it (which elastic devices were active is read from them), with each node's load."""
    tree, dead, left = runner.tree, runner.dead, runner.left
    keep = runner.plan.config.supervision.keep_dead_leaf_samples
    shard_size = {leaf: len(shard) for leaf, shard in runner.plan.shards.items()}
    rows = []
    for node, (accuracy, loss, busy_s) in result.scores.items():
        samples = sum(shard_size[leaf] for leaf in training_leaves(tree, dead, node, keep, left))
        children = sum(1 for child in tree.children(node) if child not in dead)
        rows.append(NodeMetrics(result.round, node, tree.tier_name(node), accuracy, loss, busy_s,
                                result.seconds, tree.parent_of[node] or "", children, samples,
                                max(0.0, result.seconds - busy_s)))
    return rows


def _rebalance(runner: Runner, records: list[NodeMetrics], round_index: int) -> None:
    """Every ``balance.every`` rounds, from round 2 on, the balancing policy may move
    devices between edges, judging by the busy seconds of the round just measured."""
    if _rebalance_due(runner.plan.config, round_index):
        runner.rebalance(round_index, {r.node: r.seconds for r in records if r.round == round_index - 1})


def _rebalance_due(config, round_index: int) -> bool:
    balance = config.balance
    return balance.rebalances and round_index > 1 and (round_index - 1) % balance.every == 0


def _change_membership(runner: Runner, out_dir: pathlib.Path, round_index: int) -> None:
    """Elastic devices join and leave before ``round_index``. Leavers are drained: they
    finished the last round, and a cut of it is written first if none was due, so each
    keeps its latest model for when it comes back."""
    change = runner.plan_membership(round_index)
    if change.leaves and runner.checkpoint is not None and runner.checkpoint.round < round_index - 1:
        _checkpoint(runner, out_dir, round_index - 1)
    if change:
        runner.change_membership(change)


def _checkpoint(runner: Runner, out_dir: pathlib.Path, round_index: int,
                saved: Optional[dict[str, str]] = None) -> None:
    """Commits a consistent cut of ``round_index`` by replacing state.json.

    ``saved`` (node -> SHA-256) are the checkpoints the round's own steps wrote, each
    right after that node's work in the round; without it the nodes write them now,
    which the loop asks only when no round is in flight. Either way every file holds
    that round's state. Dead nodes keep the checkpoint from before they died.
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
            relative = manifest_key(directory / f"{node}.pt", out_dir)
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


class _EventReport:
    """Echoes the runner's events not shown yet and rewrites events.parquet; the events
    from before a resume were shown by the run that had them."""

    def __init__(self, runner: Runner, out_dir: pathlib.Path, echo: Callable[[str], None]):
        self._runner, self._out_dir, self._echo = runner, out_dir, echo
        self._shown = len(runner.events)

    def __call__(self) -> None:
        events = self._runner.events
        for event in events[self._shown:]:
            self._echo(f"rayagg: [{event.kind}] {event.detail}")
        if events:
            write_events(events, self._out_dir / "events.parquet")
        self._shown = len(events)
