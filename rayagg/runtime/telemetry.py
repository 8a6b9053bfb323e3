"""Run metrics on Ray's Prometheus endpoint and dashboard, through ``ray.util.metrics``.

Two processes record, each with its own :class:`RunTelemetry`:

* the driver, through :class:`TelemetryObserver` (an observer of the run,
  rayagg/observe.py): after each collected round (:meth:`RunTelemetry.round`) and for
  each run event (:meth:`RunTelemetry.events`);
* the supervisor actor, which holds every node's last heartbeat: it hands its state to
  :meth:`RunTelemetry.watch_heartbeats` once, and a daemon thread turns it into ages
  every ``period_s`` (nothing is added to the heartbeat path itself).

What Ray 2.60 does with the values (observed on a ``ray start`` head; docs/cluster.md
has the exported names and queries): every name is exported with a
``ray_`` prefix; a Counter gets a ``_total`` suffix unless its name has one already;
values recorded by a driver and by an async actor are both exported, about 10 s
(``metrics_report_interval_ms``) after recording; values recorded before ``ray.init``
are dropped silently, and neither creating a metric nor recording without Ray raises
or warns. A Gauge series that is not set again vanishes 20-30 s after its last set,
and when its process exits; a Counter stays at its last value after its process exits.
Hence the daemon thread re-sets the current gauges every ``period_s`` (< 10 s; this also
re-sends gauges set before ``ray.init``, not counters), and a series that should go (a
dead edge's heartbeat age) goes simply by not being set any more.

Cardinality: a run may have thousands of leaves, so per-node series exist only for
the non-leaf tiers (root and edges: tens of nodes); the leaf tier is summed up per
tier (mean accuracy, node count, max busy seconds, max and mean heartbeat age).
Every series carries ``run`` (so runs sharing a cluster are told apart) and, where it
applies, ``tier`` and ``node``.

Everything but :class:`RaySink` is plain Python: rows of (metric, value, tags) that
tests check without Ray.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Optional, Protocol, Sequence

from rayagg.core.events import Event
from rayagg.core.schedule import RoundResult
from rayagg.core.supervision import heartbeat_ages
from rayagg.nodes import tier_of
from rayagg.observe import RunObserver, RunOutcome
from rayagg.rundir.metrics import NodeMetrics, tier_means

if TYPE_CHECKING:
    from rayagg.core.supervision import SupervisorState
    from rayagg.learning.plan import Plan

logger = logging.getLogger(__name__)

GAUGE, COUNTER = "gauge", "counter"
PERIOD_S = 5.0  # gauges are re-set this often: well inside Ray's 20 s gauge lifetime


@dataclass(frozen=True)
class Spec:
    """A metric's Prometheus type, its tag keys and its help text."""

    kind: str
    tags: tuple[str, ...]
    help: str


RUN, TIER, NODE = ("run",), ("run", "tier"), ("run", "tier", "node")
METRICS: dict[str, Spec] = {
    # driver, per collected round
    "rayagg_last_round": Spec(GAUGE, RUN, "Index of the last collected round."),
    "rayagg_last_round_seconds": Spec(GAUGE, RUN, "Wall-clock seconds of the last collected round."),
    "rayagg_rounds_total": Spec(COUNTER, RUN, "Rounds collected."),
    "rayagg_round_seconds_total": Spec(COUNTER, RUN, "Wall-clock seconds of the rounds collected."),
    "rayagg_accuracy": Spec(GAUGE, TIER, "Mean test accuracy (0-1) of the tier's nodes, last round."),
    "rayagg_loss": Spec(GAUGE, TIER, "Mean test loss of the tier's nodes, last round."),
    "rayagg_nodes": Spec(GAUGE, TIER, "Nodes of the tier evaluated (live) in the last round."),
    "rayagg_busy_max_seconds": Spec(GAUGE, TIER, "Busy seconds of the tier's busiest node, last round."),
    "rayagg_node_accuracy": Spec(GAUGE, NODE, "Test accuracy of a non-leaf node, last round."),
    "rayagg_node_busy_seconds": Spec(GAUGE, NODE, "Busy seconds of a non-leaf node, last round."),
    "rayagg_node_bridge_samples": Spec(GAUGE, NODE, "Bridge samples a non-leaf node trained on."),
    "rayagg_node_children": Spec(GAUGE, NODE, "Live children of a non-leaf node."),
    "rayagg_last_round_moved_bytes": Spec(GAUGE, RUN, "Bytes between parents and children (logits, bridge "
                                                      "samples, weights), last round."),
    "rayagg_moved_bytes_total": Spec(COUNTER, RUN, "Bytes between parents and children (logits, bridge "
                                                   "samples, weights)."),
    "rayagg_events_total": Spec(COUNTER, ("run", "kind", "tier"),
                                "Run events by kind (rayagg.core.events.EventKind) and node tier."),
    # supervisor
    "rayagg_heartbeat_age_seconds": Spec(GAUGE, NODE, "Seconds since a live non-leaf node's last heartbeat."),
    "rayagg_heartbeat_age_max_seconds": Spec(GAUGE, TIER, "Largest heartbeat age of the tier's live nodes."),
    "rayagg_heartbeat_age_mean_seconds": Spec(GAUGE, TIER, "Mean heartbeat age of the tier's live nodes."),
    "rayagg_dead_nodes": Spec(GAUGE, TIER, "Nodes of the tier declared dead (not counting leavers)."),
}


@dataclass(frozen=True)
class Row:
    """One value for one series: ``metric`` is a key of METRICS, ``tags`` its tag values."""

    metric: str
    value: float
    tags: Mapping[str, str]


# ------------------------------------------------------------------ pure: rows


def round_rows(run: str, records: Sequence[NodeMetrics], tier_names: Sequence[str],
               moved_bytes: Optional[int] = None) -> list[Row]:
    """The rows of one collected round from its per-node ``records`` (one round's, as
    the loop makes them): run-level, per-tier for every tier with a
    record, per-node for the tiers above the leaves. ``moved_bytes`` (None: unknown)
    adds the round's bytes. Raises ValueError if ``records`` is empty or mixes rounds."""
    rounds = {r.round for r in records}
    if len(rounds) != 1:
        raise ValueError(f"records of exactly one round are needed, got rounds {sorted(rounds)}")
    first, run_tags = records[0], {"run": run}
    rows = [Row("rayagg_last_round", first.round, run_tags), Row("rayagg_rounds_total", 1, run_tags),
            Row("rayagg_last_round_seconds", first.round_s, run_tags)]
    rows += [Row("rayagg_round_seconds_total", first.round_s, run_tags)] if first.round_s > 0 else []
    if moved_bytes is not None:
        rows += [Row("rayagg_last_round_moved_bytes", moved_bytes, run_tags)]
        rows += [Row("rayagg_moved_bytes_total", moved_bytes, run_tags)] if moved_bytes > 0 else []
    return rows + _tier_rows(run, records, tier_names) + _node_rows(run, records, tier_names[-1:])


def _tier_rows(run: str, records: Sequence[NodeMetrics], tier_names: Sequence[str]) -> list[Row]:
    rows = []
    for tier, accuracy in tier_means(list(records), list(tier_names)).items():
        mine, tags = [r for r in records if r.tier == tier], {"run": run, "tier": tier}
        rows += [Row("rayagg_accuracy", accuracy, tags),
                 Row("rayagg_loss", sum(r.loss for r in mine) / len(mine), tags),
                 Row("rayagg_nodes", len(mine), tags),
                 Row("rayagg_busy_max_seconds", max(r.seconds for r in mine), tags)]
    return rows


def _node_rows(run: str, records: Sequence[NodeMetrics], leaf_tiers: Sequence[str]) -> list[Row]:
    rows = []
    for r in records:
        if r.tier in leaf_tiers:
            continue  # thousands of leaves: their tier's rows stand for them
        tags = {"run": run, "tier": r.tier, "node": r.node}
        rows += [Row("rayagg_node_accuracy", r.accuracy, tags),
                 Row("rayagg_node_busy_seconds", r.seconds, tags),
                 Row("rayagg_node_bridge_samples", r.bridge_samples, tags),
                 Row("rayagg_node_children", r.children, tags)]
    return rows


def event_rows(run: str, events: Iterable[Event]) -> list[Row]:
    """Counter increments for ``events``: one row per (kind, tier) seen, its value the
    number of such events. Run-level events (a retry, a resume) have tier ""."""
    counts = Counter((e.kind, tier_of(e.node) if e.node else "") for e in events)
    return [Row("rayagg_events_total", n, {"run": run, "kind": str(kind), "tier": tier})
            for (kind, tier), n in sorted(counts.items())]


def heartbeat_rows(run: str, state: "SupervisorState", now: float) -> list[Row]:
    """Heartbeat ages in ``state`` at ``now`` (its clock: the supervisor's monotonic one)
    of the live nodes, counted as supervision counts silence (a node never heard from
    since ``started_at``; one restarting is left out until it is heard from): per node
    for the non-leaf tiers, max and mean per tier for every tier with such a node; and
    each tier's dead count (leavers, also in ``dead``, are not deaths)."""
    tree, rows = state.tree, []
    ages: dict[str, list[float]] = defaultdict(list)
    # A dead node has no age (it only grows): its death is counted instead.
    for node, age in heartbeat_ages(state, now).items():
        tier = tree.tier_name(node)
        ages[tier].append(age)
        if not tree.is_leaf(node):
            rows.append(Row("rayagg_heartbeat_age_seconds", age, {"run": run, "tier": tier, "node": node}))
    deaths = Counter(tree.tier_name(node) for node in state.dead - state.left)
    for tier in tree.tier_names:
        tags = {"run": run, "tier": tier}
        if ages[tier]:
            rows += [Row("rayagg_heartbeat_age_max_seconds", max(ages[tier]), tags),
                     Row("rayagg_heartbeat_age_mean_seconds", sum(ages[tier]) / len(ages[tier]), tags)]
        rows.append(Row("rayagg_dead_nodes", deaths[tier], tags))
    return rows


# ------------------------------------------------------------------ recording


class Sink(Protocol):
    def record(self, rows: Sequence[Row]) -> None:
        """Sets each gauge row and adds each counter row."""


class RunTelemetry:
    """One per process. Gauges of a kind (the round's, the heartbeats') replace the
    previous set of that kind, and are re-sent every ``period_s`` by a daemon thread
    (None: no thread; call :meth:`refresh`). ``sink`` defaults to :class:`RaySink`."""

    def __init__(self, run: str, sink: Optional[Sink] = None, period_s: Optional[float] = PERIOD_S):
        self.run = run
        self._sink = sink if sink is not None else RaySink()
        self._gauges: dict[str, list[Row]] = {}
        self._watch: Optional[Callable[[], "SupervisorState"]] = None
        self._lock = threading.Lock()  # the thread and the caller both send gauges
        self._stop = threading.Event()
        self._period_s = period_s
        self._thread: Optional[threading.Thread] = None

    def round(self, records: Sequence[NodeMetrics], tier_names: Sequence[str],
              moved_bytes: Optional[int] = None) -> list[Row]:
        """Driver, after each collected round: see :func:`round_rows`. Returns the rows sent."""
        return self._send("round", round_rows(self.run, records, tier_names, moved_bytes))

    def events(self, events: Iterable[Event]) -> list[Row]:
        """Driver: counts ``events``, each to be passed once (only the new ones: counters
        add). Returns the rows sent."""
        return self._send(None, event_rows(self.run, events))

    def heartbeats(self, state: "SupervisorState", now: float) -> list[Row]:
        """Sends the ages in ``state`` at ``now`` (see :func:`heartbeat_rows`) once; a
        supervisor rather calls :meth:`watch_heartbeats`. Returns the rows sent."""
        return self._send("heartbeats", heartbeat_rows(self.run, state, now))

    def watch_heartbeats(self, state: Callable[[], "SupervisorState"]) -> None:
        """Supervisor, once: from now on every refresh reads ``state()`` (e.g.
        ``lambda: self._state``) and sends its ages at ``time.monotonic()``."""
        self._watch = state
        self.refresh()

    def refresh(self) -> None:
        """Re-sends the current gauges (recomputing the watched heartbeats first) so
        that Ray keeps exporting them; starts the daemon thread on first use."""
        watch = self._watch
        if watch is not None:
            ages = heartbeat_rows(self.run, watch(), time.monotonic())  # the supervisor's clock
        with self._lock:
            if watch is not None:
                self._gauges["heartbeats"] = ages
            self._sink.record([row for group in self._gauges.values() for row in group])
        self._start_thread()

    def close(self) -> None:
        """Stops re-sending: the gauges vanish from the endpoint within ~30 s; counters stay."""
        self._stop.set()
        with self._lock:
            self._gauges.clear()
        self._watch = None

    def _send(self, group: Optional[str], rows: list[Row]) -> list[Row]:
        """Sends ``rows``; their gauges replace ``group``'s (None: rows without gauges)."""
        with self._lock:
            if group is not None:
                self._gauges[group] = [row for row in rows if METRICS[row.metric].kind == GAUGE]
            self._sink.record(rows)
        self._start_thread()
        return rows

    def _start_thread(self) -> None:
        if self._period_s is None or self._thread is not None or self._stop.is_set():
            return
        self._thread = threading.Thread(target=self._loop, name="rayagg-telemetry", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        warned = False
        while not self._stop.wait(self._period_s):
            try:
                self.refresh()
            except Exception:  # telemetry must never take the run down; the next period tries again
                if not warned:
                    logger.warning("rayagg telemetry: re-sending gauges failed", exc_info=True)
                warned = True


class TelemetryObserver(RunObserver):
    """The driver's side: each collected round's rows, with the bytes it moved over the
    tree's links (rayagg/core/wire.py), and a count per event."""

    def __init__(self, run: str, plan: "Plan", telemetry: Optional[RunTelemetry] = None):
        self.telemetry = telemetry if telemetry is not None else RunTelemetry(run)
        self._tiers = [tier.name for tier in plan.config.tree.tiers]

    def round_collected(self, result: RoundResult, records: Sequence[NodeMetrics]) -> None:
        moved = sum(link.up + link.down for link in result.wire.values())
        self.telemetry.round(records, self._tiers, moved_bytes=moved)

    def event(self, event: Event) -> None:
        self.telemetry.events([event])

    def run_finished(self, outcome: RunOutcome) -> None:
        self.telemetry.close()


class RaySink:
    """Records rows through ``ray.util.metrics``; each metric object is made on first
    use, so a process only registers what it records. Works (records nothing) without
    Ray: values recorded before ``ray.init`` are lost, so connect first."""

    def __init__(self):
        from ray.util import metrics  # imported here: the rows above are testable without Ray

        self._made: dict[str, object] = {}
        self._kinds = {GAUGE: metrics.Gauge, COUNTER: metrics.Counter}

    def record(self, rows: Sequence[Row]) -> None:
        """Sends ``rows``; ValueError for a row missing one of its metric's tag keys."""
        for row in rows:
            spec, metric = METRICS[row.metric], self._metric(row.metric)
            missing = [key for key in spec.tags if key not in row.tags]
            if missing:
                raise ValueError(f"{row.metric} needs tags {missing}, got {sorted(row.tags)}")
            tags = {key: str(row.tags[key]) for key in spec.tags}
            if spec.kind == GAUGE:
                metric.set(float(row.value), tags=tags)
            else:
                metric.inc(float(row.value), tags=tags)

    def _metric(self, name: str):
        if name not in self._made:
            spec = METRICS[name]
            self._made[name] = self._kinds[spec.kind](name, description=spec.help, tag_keys=spec.tags)
        return self._made[name]
