"""MLflow: one MLflow run per rayagg run, through ``mlflow.MlflowClient`` (the
``mlflow-skinny`` package, with SQLAlchemy and Alembic for the default SQLite store:
``pip install 'rayagg[tracking]'``).

What it records: the config as params (dotted keys), a round's values as metrics
(step = round; rayagg/tracking/scalars.py), the SHA-256 of every committed cut's
manifest as a tag ``checkpoint.round-<r>.sha256`` (the manifest lists every checkpoint
file's own SHA-256), the rayagg commit (``mlflow.source.git.commit``) and version as tags, and at the end the plot,
the manifest, the config and the events as artifacts.

A run's MLflow ids are kept in RUN_DIR/tracking.json, so ``rayagg run --resume``
continues the same MLflow run; rounds it already logged (an interrupted attempt got
further than its last checkpoint) are not logged again, so every step appears once.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from rayagg.config import RunConfig
from rayagg.core.events import Event
from rayagg.core.schedule import RoundResult
from rayagg.files import sha256_bytes, write_atomic
from rayagg.observe import RunObserver, RunOutcome, RunStart
from rayagg.rundir.manifest import CONFIG_FILE, STATE_FILE, TRACKING_FILE, RunState
from rayagg.rundir.metrics import NodeMetrics
from rayagg.rundir.plot import ACCURACY_PLOT
from rayagg.storage import as_path, is_uri
from rayagg.tracking.scalars import flat_params, rayagg_commit, round_scalars

STEP_KEY = "round/seconds"  # logged every round: its history says which rounds are logged
# An MLflow server that does not answer must cost seconds, not MLflow's default of 7
# retries with a doubling backoff (minutes); a user's own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
BATCH = 100  # log_batch takes at most 100 params (1000 metrics) per call


@dataclass(frozen=True)
class Group:
    """A parent MLflow run that a tool's runs (``rayagg compare``, ``balance-test``) are
    children of, in the parent's store and experiment."""

    tracking_uri: str
    experiment_id: str
    run_id: str


def tracking_uri_of(config: RunConfig, beside: pathlib.Path) -> str:
    """``tracking.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store in
    the local folder ``beside`` (a run directory's parent); ValueError when that folder is
    on object storage (SQLite needs a local file)."""
    uri = config.tracking.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if is_uri(str(beside)):
        raise ValueError(f"{beside} is on object storage: set tracking.mlflow.tracking_uri (or "
                         "$MLFLOW_TRACKING_URI) to an MLflow server or a local sqlite:/// file")
    return f"sqlite:///{pathlib.Path(beside).absolute() / 'mlflow.db'}"


def client_for(uri: str):
    """An MlflowClient on ``uri``, with bounded HTTP retries unless the user set theirs."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str, uri: str, beside: pathlib.Path) -> str:
    """The id of experiment ``name``, made if new (in a SQLite store made here, its
    artifacts go to ``beside``/mlartifacts, not the working directory)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI") == uri:
        location = (pathlib.Path(beside).absolute() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_group(config: RunConfig, out: pathlib.Path, name: str, params: dict[str, str]) -> Group:
    """Opens the parent run of a tool's runs under ``out`` (their run directories' parent,
    so the default store is the one they use too)."""
    uri = tracking_uri_of(config, out)
    client = client_for(uri)
    experiment = experiment_id(client, config.tracking.mlflow.experiment or config.name, uri, out)
    run = client.create_run(experiment, run_name=name, tags=_code_tags())
    _log_params(client, run.info.run_id, params)
    return Group(uri, experiment, run.info.run_id)


def end_group(group: Group, failed: bool) -> None:
    client_for(group.tracking_uri).set_terminated(group.run_id, "FAILED" if failed else "FINISHED")


class MlflowTracker(RunObserver):
    """The run's MLflow run: made at start (or found again from RUN_DIR/tracking.json on
    a resume), ended at the end as FINISHED, KILLED (stopped) or FAILED."""

    def __init__(self, config: RunConfig, run_dir, group: Optional[Group] = None):
        self._config, self._run_dir, self._group = config, as_path(run_dir), group
        self._tiers = [tier.name for tier in config.tree.tiers]
        self._client, self._run_id, self._logged_through = None, None, -1
        self._events: list[str] = []
        self.where = ""  # once started: which MLflow run, in which store

    @property
    def run_id(self) -> Optional[str]:
        return self._run_id

    def run_started(self, run: RunStart) -> None:
        record = self._stored() if run.resumed_after is not None else None
        uri = record["tracking_uri"] if record else (
            self._group.tracking_uri if self._group else tracking_uri_of(self._config, self._run_dir.parent))
        self._client = client_for(uri)
        if record:
            self._run_id = record["run_id"]
            self._client.update_run(self._run_id, status="RUNNING")
            history = self._client.get_metric_history(self._run_id, STEP_KEY)
            self._logged_through = max((m.step for m in history), default=-1)
            self.where = f"MLflow run {self._run_id} in {uri} (continued)"
            return
        experiment = self._group.experiment_id if self._group else experiment_id(
            self._client, self._config.tracking.mlflow.experiment or self._config.name, uri, self._run_dir.parent)
        tags = {**_code_tags(), "rayagg_run_dir": str(self._run_dir)}
        if self._group:
            tags["mlflow.parentRunId"] = self._group.run_id
        self._run_id = self._client.create_run(experiment, run_name=self._run_dir.name, tags=tags).info.run_id
        write_atomic(self._run_dir / TRACKING_FILE, json.dumps(
            {"tracking_uri": uri, "experiment_id": experiment, "run_id": self._run_id}, indent=1).encode())
        _log_params(self._client, self._run_id, flat_params(self._config.model_dump()))
        self.where = f"MLflow run {self._run_id} in {uri}"

    def round_collected(self, result: RoundResult, records: Sequence[NodeMetrics]) -> None:
        if result.round <= self._logged_through:
            return  # logged by the attempt this run resumed; a resume redoes it exactly
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, result.round)
                   for name, value in round_scalars(records, self._tiers).items()]
        for start in range(0, len(metrics), 1000):
            self._client.log_batch(self._run_id, metrics=metrics[start:start + 1000])

    def event(self, event: Event) -> None:
        about = f" {event.node}:" if event.node else ""
        self._events.append(f"round {event.round} [{event.kind}]{about} {event.detail}")

    def checkpoint_committed(self, state: RunState) -> None:
        digest = sha256_bytes((self._run_dir / STATE_FILE).read_bytes())
        self._client.set_tag(self._run_id, f"checkpoint.round-{state.round}.sha256", digest)

    def run_finished(self, outcome: RunOutcome) -> None:
        if self._run_id is None:
            return
        with tempfile.TemporaryDirectory(prefix="rayagg-mlflow-") as staging:
            for name in (ACCURACY_PLOT, STATE_FILE, CONFIG_FILE):
                source = self._run_dir / name
                if source.is_file():  # read through the store: RUN_DIR may be a URI
                    local = pathlib.Path(staging) / name
                    local.write_bytes(source.read_bytes())
                    self._client.log_artifact(self._run_id, str(local))
        if self._events:
            self._client.log_text(self._run_id, "\n".join(self._events) + "\n", "events.txt")
        status = "FINISHED" if outcome.error is None else ("KILLED" if outcome.stopped else "FAILED")
        self._client.set_terminated(self._run_id, status)

    def _stored(self) -> Optional[dict]:
        """RUN_DIR/tracking.json, or None (the run was not tracked by MLflow before)."""
        path = self._run_dir / TRACKING_FILE
        if not path.is_file():
            return None
        return json.loads(path.read_bytes())


def _code_tags() -> dict[str, str]:
    # MLflow shows its own source tag as the run's commit.
    return {"mlflow.source.git.commit": rayagg_commit(), "rayagg_version": _version()}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rayagg")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(key, value[:6000]) for key, value in sorted(params.items())]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, params=items[start:start + BATCH])
