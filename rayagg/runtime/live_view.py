"""The live view of a Ray run, published to RUN_DIR/live.json: an observer of the run.

``begin`` records where the run can be reached (its Ray cluster and namespace) before
the hosts start; from then on the view of the tree (rayagg/rundir/live.py) is rewritten
when the tree is up, after every collected round, and while the runtime waits at most
every LIVE_EVERY_S, or every LIVE_COST_SHARE-th of the driver's time on a tree so large
that writing the view takes long (a 10,000-device view takes tenths of a second, and the
driver's time is the supervision's); each node's accuracy shows as soon as its
evaluation arrives. The
record goes when the run ends. ``rayagg status RUN_DIR`` reads it; ``rayagg scale``
finds the run's supervisor through it.
"""
from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any, Sequence

import ray

from rayagg.core.schedule import EVALUATE, RoundResult
from rayagg.observe import RunObserver, RunOutcome, RunStart
from rayagg.rundir.live import clear_live, node_views, to_record, write_live
from rayagg.rundir.metrics import NodeMetrics

if TYPE_CHECKING:
    from rayagg.runtime.runner import RayRunner

LIVE_EVERY_S = 2.0  # how often, at most, live.json is rewritten while the runtime waits
LIVE_COST_SHARE = 0.05  # the most of the driver's waiting time those rewrites may take


class LivePublisher(RunObserver):
    """Writes ``runner``'s tree as it is now to RUN_DIR/live.json; ``address`` is the Ray
    cluster's GCS address."""

    def __init__(self, runner: "RayRunner", address: str):
        self._runner, self._address = runner, address
        self._scores: dict[str, tuple[int, float]] = {}  # node -> (round, accuracy) last evaluated
        self._done = runner.round_index  # the last round collected
        self._published = 0.0  # when live.json was last written (monotonic)
        self._every_s = LIVE_EVERY_S  # the wait before the next rewrite while waiting

    def begin(self) -> None:
        """The record without a view: the run is starting (``rayagg status`` says so)."""
        self._write(None)

    def run_started(self, run: RunStart) -> None:
        self.publish()

    def step_finished(self, round_index: int, node: str, call: str, value: Any) -> None:
        if call == EVALUATE:
            self._scores[node] = (round_index, value.accuracy)

    def waiting(self) -> None:
        if time.monotonic() - self._published >= self._every_s:
            self.publish()

    def round_collected(self, result: RoundResult, records: Sequence[NodeMetrics]) -> None:
        self._done = result.round
        self.publish()

    def run_finished(self, outcome: RunOutcome) -> None:
        clear_live(self._runner.run_dir)

    def publish(self) -> None:
        """Rewrites live.json with the tree as it is now (heartbeat ages from the
        supervisor: a view goes out without them rather than hold up the round)."""
        started = self._published = time.monotonic()
        runner = self._runner
        try:
            ages = ray.get(runner.recovery.supervisor.heartbeat_ages.remote(), timeout=LIVE_EVERY_S)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            ages = {}
        size = runner.plan.shard_sizes
        views = node_views(
            runner.tree, runner.plan.tree, runner.dead, runner.left, runner.hosts.home,
            {host: report.ip for host, report in runner.placement.items()},
            {node: sum(size[leaf] for leaf in runner.leaves_of(node)) for node in runner.tree.nodes},
            self._scores, ages)
        self._write(to_record(views, rounds=runner.plan.config.training.rounds, done=self._done,
                              in_flight=runner.rounds_pending, updated=time.time()))
        self._every_s = max(LIVE_EVERY_S, (time.monotonic() - started) / LIVE_COST_SHARE)

    def _write(self, view) -> None:
        write_live(self._runner.run_dir, self._address, self._runner.namespace, os.getpid(), socket.gethostname(),
                   view=view)
