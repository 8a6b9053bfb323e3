"""Watching a run: one observer interface for a run's life, used by both runtimes.

The round loop (rayagg/loop.py) and the runtimes call an :class:`Observers` fan-out at
each point of a run, and everything that watches a run is an observer: the progress
lines (:class:`Progress`), the run directory's metrics, events and plot
(:class:`RunFiles`), a Ray run's live view and Prometheus metrics
(rayagg/runtime/live_view.py, rayagg/runtime/telemetry.py), the bench's tracing
(rayagg/tools/bench.py), and tests. Nothing parses printed text to learn what a run did,
and nothing subclasses a runner to watch it.

The calls, in the order a run makes them::

    run_started(run)                          the tree is up (resumed: restored)
      round_submitted(round, steps, attempt)  a round's steps went out (attempt 2: its retry)
      step_finished(round, node, call, value) one step's result, as it arrives
      waiting()                               every heartbeat interval while Ray calls run
      event(event)                            something happened to the tree (any time)
      round_collected(result, records)        a round is complete, with its metrics rows
      checkpoint_committed(state)             a consistent cut is committed (state.json)
    run_finished(outcome)                     done, stopped or failed; the runtime still runs

Observers run in the driver's thread, in the order they were given, then those the
runtime adds at start. An exception in an observer fails the run, so one that must
never do that (a tracker whose server is down) catches its own; ``run_finished`` reaches
every observer even when one raises. Observers may make Ray calls (the runtime is up
until every ``run_finished`` returned) but must not change the tree.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from rayagg.config import RunConfig
from rayagg.core.events import Event
from rayagg.core.schedule import RoundResult, Step
from rayagg.rundir.events import EVENTS_FILE, write_events
from rayagg.rundir.manifest import RunState
from rayagg.rundir.metrics import METRICS_FILE, NodeMetrics, summary_line, write_metrics
from rayagg.rundir.plot import ACCURACY_PLOT, plot_accuracy
from rayagg.stopping import Stopped
from rayagg.storage import as_path


@dataclass(frozen=True)
class RunStart:
    """What a run is: its config (what the nodes were built from), its directory, and the
    round it resumed after (None: a new run)."""

    config: RunConfig
    run_dir: pathlib.Path
    resumed_after: Optional[int] = None


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: every round's metrics (a resumed run's earlier rounds too) and the
    exception that ended it (None: every round done; a :class:`Stopped` when stopped)."""

    records: list[NodeMetrics]
    error: Optional[BaseException] = None

    @property
    def stopped(self) -> Optional[Stopped]:
        return self.error if isinstance(self.error, Stopped) else None

    @property
    def kept_rounds_in_flight(self) -> bool:
        """Done, or stopped by a first request (the rounds collected are whole; a later one
        in flight may have been abandoned, uncommitted)."""
        return self.error is None or (self.stopped is not None and not self.stopped.abandoned)


class RunObserver:
    """A run's life as callbacks; each does nothing unless overridden (see the module)."""

    def run_started(self, run: RunStart) -> None:
        """The tree is up: every live node built (restored), its bridge samples in place."""

    def round_submitted(self, round_index: int, steps: Sequence[Step], attempt: int) -> None:
        """The round's steps went out, in this order; ``attempt`` 2 is the retry of a round
        that lost a node (its steps replace the first attempt's)."""

    def step_finished(self, round_index: int, node: str, call: str, value: Any) -> None:
        """One step's result, as the driver receives it (``evaluate``: a ``Scores``)."""

    def waiting(self) -> None:
        """The Ray runtime is waiting on calls (every ``supervision.heartbeat_interval_s``)."""

    def event(self, event: Event) -> None:
        """Something happened to the tree: a death, a move, a join, a retry, a resume."""

    def round_collected(self, result: RoundResult, records: Sequence[NodeMetrics]) -> None:
        """A round is complete; ``records`` are its rows of metrics.parquet (one per node
        that was live in it), written before its checkpoint is committed."""

    def checkpoint_committed(self, state: RunState) -> None:
        """A consistent cut of ``state.round`` is committed: a resume continues after it."""

    def run_finished(self, outcome: RunOutcome) -> None:
        """The run ended; the runtime closes after every observer returned."""


class Observers(RunObserver):
    """Calls each of its observers in turn; a runtime :meth:`add` s its own at start."""

    def __init__(self, observers: Iterable[RunObserver] = ()):
        self._observers = list(observers)

    def add(self, *observers: RunObserver) -> None:
        self._observers.extend(observers)

    def run_started(self, run: RunStart) -> None:
        self._each(lambda o: o.run_started(run))

    def round_submitted(self, round_index: int, steps: Sequence[Step], attempt: int) -> None:
        self._each(lambda o: o.round_submitted(round_index, steps, attempt))

    def step_finished(self, round_index: int, node: str, call: str, value: Any) -> None:
        self._each(lambda o: o.step_finished(round_index, node, call, value))

    def waiting(self) -> None:
        self._each(lambda o: o.waiting())

    def event(self, event: Event) -> None:
        self._each(lambda o: o.event(event))

    def round_collected(self, result: RoundResult, records: Sequence[NodeMetrics]) -> None:
        self._each(lambda o: o.round_collected(result, records))

    def checkpoint_committed(self, state: RunState) -> None:
        self._each(lambda o: o.checkpoint_committed(state))

    def run_finished(self, outcome: RunOutcome) -> None:
        """Every observer hears it; the first exception is raised after the last one."""
        first: Optional[BaseException] = None
        for observer in list(self._observers):
            try:
                observer.run_finished(outcome)
            except BaseException as exc:  # noqa: B902 - the others must still hear the end
                first = first or exc
        if first is not None:
            raise first

    def _each(self, call: Callable[[RunObserver], None]) -> None:
        for observer in list(self._observers):
            call(observer)


class Progress(RunObserver):
    """The run's lines for a person: one per collected round (the root's accuracy, every
    other tier's mean, the round's seconds, the edges' imbalance) and one per event."""

    def __init__(self, echo: Callable[[str], None] = print):
        self._echo = echo
        self._rounds, self._tiers, self._counted = 0, [], ""

    def run_started(self, run: RunStart) -> None:
        tree = run.config.tree
        self._rounds, self._tiers = run.config.training.rounds, [tier.name for tier in tree.tiers]
        self._counted = self._tiers[-1] if tree.elastic is not None else ""

    def event(self, event: Event) -> None:
        self._echo(f"rayagg: [{event.kind}] {event.detail}")

    def round_collected(self, result: RoundResult, records: Sequence[NodeMetrics]) -> None:
        self._echo(summary_line(result.round, self._rounds, list(records), self._tiers, self._counted))


class RunFiles(RunObserver):
    """RUN_DIR's record of what was measured: metrics.parquet after every round (before
    its checkpoint commits, so a cut never names a round the metrics lack),
    events.parquet with it and at the end, and accuracy.png at the end of a run whose
    results are whole. ``records`` and ``events`` are a resumed run's history."""

    def __init__(self, run_dir: pathlib.Path, config: RunConfig, records: Sequence[NodeMetrics] = (),
                 events: Sequence[Event] = ()):
        self._run_dir, self._tiers = as_path(run_dir), [tier.name for tier in config.tree.tiers]
        self.records, self.events = list(records), list(events)

    def event(self, event: Event) -> None:
        self.events.append(event)

    def round_collected(self, result: RoundResult, records: Sequence[NodeMetrics]) -> None:
        self.records += records
        write_metrics(self.records, self._run_dir / METRICS_FILE)
        self._write_events()

    def run_finished(self, outcome: RunOutcome) -> None:
        self._write_events()
        if self.records and outcome.kept_rounds_in_flight:
            plot_accuracy(self.records, self._tiers, self._run_dir / ACCURACY_PLOT, self.events)

    def _write_events(self) -> None:
        if self.events:
            write_events(self.events, self._run_dir / EVENTS_FILE)
