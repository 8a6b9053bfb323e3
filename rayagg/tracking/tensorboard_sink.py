"""TensorBoard event files: a round's values as scalars (step = round), events and the
config as text. Written with torch's SummaryWriter (which needs the ``tensorboard``
package: ``pip install 'rayagg[tracking]'``)."""
from __future__ import annotations

import pathlib
from typing import Sequence

from rayagg.config import RunConfig
from rayagg.core.events import Event
from rayagg.core.schedule import RoundResult
from rayagg.observe import RunObserver, RunOutcome, RunStart
from rayagg.rundir.metrics import NodeMetrics
from rayagg.storage import is_uri
from rayagg.rundir.manifest import TENSORBOARD_DIR
from rayagg.tracking.scalars import rayagg_commit, round_scalars


def log_dir_of(config: RunConfig, run_dir) -> pathlib.Path:
    """Where the event files go; ValueError for a RUN_DIR on object storage without a
    local ``log_dir`` (SummaryWriter writes local files)."""
    given = config.tracking.tensorboard.log_dir
    if given is not None:
        return pathlib.Path(given).expanduser().absolute()
    if is_uri(str(run_dir)):
        raise ValueError(f"RUN_DIR {run_dir} is on object storage: set tracking.tensorboard.log_dir to a "
                         "local folder")
    return pathlib.Path(run_dir) / TENSORBOARD_DIR


class TensorBoardTracker(RunObserver):
    """One event-file folder per run. A resumed run opens it again with ``purge_step``
    the first round it trains, so readers drop what an interrupted attempt logged for
    the rounds it redoes: every step appears once."""

    def __init__(self, config: RunConfig, run_dir):
        self._config, self._run_dir = config, run_dir
        self._tiers = [tier.name for tier in config.tree.tiers]
        self._writer = None
        self._events: list[str] = []  # since the last round collected
        self.where = ""  # once started: where the event files go

    def run_started(self, run: RunStart) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = None if run.resumed_after is None else run.resumed_after + 1
        log_dir = log_dir_of(self._config, self._run_dir)
        self._writer = SummaryWriter(str(log_dir), purge_step=purge)
        self.where = f"TensorBoard event files in {log_dir} (tensorboard --logdir {log_dir})"
        if run.resumed_after is None:
            self._writer.add_text("config", "```\n" + self._config.to_yaml() + "```", 0)
            self._writer.add_text("rayagg_commit", rayagg_commit(), 0)

    def round_collected(self, result: RoundResult, records: Sequence[NodeMetrics]) -> None:
        for name, value in round_scalars(records, self._tiers).items():
            self._writer.add_scalar(name, value, result.round)
        self._write_events(result.round)
        self._writer.flush()

    def event(self, event: Event) -> None:
        about = f" {event.node}:" if event.node else ""
        self._events.append(f"- round {event.round} [{event.kind}]{about} {event.detail}")

    def run_finished(self, outcome: RunOutcome) -> None:
        if self._writer is not None:
            last = max((r.round for r in outcome.records), default=0)
            self._write_events(last)
            self._writer.close()
            self._writer = None

    def _write_events(self, step: int) -> None:
        """One text entry per step (TensorBoard shows one per step and tag): the events
        since the last, a Markdown list."""
        if self._events:
            self._writer.add_text("events", "\n".join(self._events), step)
            self._events = []

