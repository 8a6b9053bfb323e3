"""Experiment trackers as run observers (rayagg/observe.py): TensorBoard event files and
MLflow runs, as the config's ``tracking`` section names them (rayagg/config/tracking.py).

The driver alone writes them (the round loop adds them, rayagg/loop.py), from what it
already has: each collected round's metrics rows, the events, the committed cuts. A
tracker never costs a run: one that cannot start (its package missing, its server not
answering, no place for its files) or that fails later is a warning on stderr, and the
run goes on writing its own files; that tracker records nothing more for that run.
"""
from __future__ import annotations

import contextlib
import pathlib
import sys
from typing import Any, Callable, Iterator, Optional, Sequence

from rayagg.config import RunConfig
from rayagg.observe import RunObserver, RunOutcome, RunStart

INSTALL_HINT = "pip install 'rayagg[tracking]'"


PACKAGES = {"TensorBoard": ("tensorboard",), "MLflow": ("mlflow", "sqlalchemy", "alembic")}


def describe(config: RunConfig) -> Optional[str]:
    """What ``rayagg check`` says of ``config.tracking`` (None: no tracker), naming any
    package a tracker needs that is not installed (a run would warn and go on without it)."""
    import importlib.util

    named = []
    if config.tracking.tensorboard is not None:
        named.append(("TensorBoard", f"event files in {config.tracking.tensorboard.log_dir or 'RUN_DIR/tensorboard'}"))
    if config.tracking.mlflow is not None:
        mlflow = config.tracking.mlflow
        store = mlflow.tracking_uri or "$MLFLOW_TRACKING_URI, else sqlite:///<RUN_DIR's parent>/mlflow.db"
        named.append(("MLflow", f"experiment {mlflow.experiment or config.name}, store {store}"))
    if not named:
        return None
    missing = sorted({package for name, _ in named for package in PACKAGES[name]
                      if importlib.util.find_spec(package) is None})
    lacking = f"; not installed: {', '.join(missing)} ({INSTALL_HINT})" if missing else ""
    return "; ".join(f"{name} ({where})" for name, where in named) + lacking


def trackers(config: RunConfig, run_dir, group: Optional[Any] = None,
             warn: Callable[[str], None] = None, say: Callable[[str], None] = print) -> list[RunObserver]:
    """The observers ``config.tracking`` asks for, each guarded (see the module); ``group``
    an MLflow parent run (rayagg.tracking.mlflow_sink.Group) for a tool's runs. Each says
    where it records once started (``say``), and warns (``warn``) when it fails."""
    warn = warn or _warn
    found: list[RunObserver] = []
    if config.tracking.tensorboard is not None:
        from rayagg.tracking.tensorboard_sink import TensorBoardTracker

        found.append(Guarded("TensorBoard", TensorBoardTracker(config, run_dir), warn, say))
    if config.tracking.mlflow is not None:
        from rayagg.tracking.mlflow_sink import MlflowTracker

        found.append(Guarded("MLflow", MlflowTracker(config, run_dir, group), warn, say))
    return found


@contextlib.contextmanager
def tracked_group(config: RunConfig, out: pathlib.Path, name: str, params: dict[str, str],
                  warn: Callable[[str], None] = None) -> Iterator[Optional[Any]]:
    """For a tool that makes several runs under ``out`` (``rayagg compare``, ``balance-test``):
    yields the MLflow parent run (rayagg.tracking.mlflow_sink.Group) their runs become
    children of, ended FINISHED or FAILED with the block; None when ``config`` tracks no
    MLflow or the parent cannot be made (a warning: the runs still track on their own)."""
    warn = warn or _warn
    group = None
    if config.tracking.mlflow is not None:
        try:
            from rayagg.tracking.mlflow_sink import start_group

            group = start_group(config, out, name, params)
        except Exception as exc:  # as for a run's own tracker: never a lost run
            warn(f"tracking: MLflow could not start the parent run {name!r}: {_reason(exc)}; each run is "
                 "tracked on its own")
    failed = True
    try:
        yield group
        failed = False
    finally:
        if group is not None:
            try:
                from rayagg.tracking.mlflow_sink import end_group

                end_group(group, failed)
            except Exception as exc:
                warn(f"tracking: MLflow could not end the parent run {name!r}: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    hint = f" ({INSTALL_HINT})" if isinstance(exc, ImportError) else ""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300] + hint


class Guarded(RunObserver):
    """Runs ``inner``'s callbacks; the first exception is one warning and ends ``inner``'s
    part in the run (a later ``run_finished`` still reaches it, to close what it opened)."""

    def __init__(self, name: str, inner: RunObserver, warn: Callable[[str], None],
                 say: Callable[[str], None] = print):
        self.name, self.inner, self._warn, self._say = name, inner, warn, say
        self.failed: Optional[BaseException] = None

    def run_started(self, run: RunStart) -> None:
        self._call("could not start", lambda: self.inner.run_started(run))
        where = getattr(self.inner, "where", None)
        if self.failed is None and where:
            self._say(f"rayagg: tracking: {where}")

    def round_submitted(self, round_index, steps, attempt) -> None:
        self._call("failed", lambda: self.inner.round_submitted(round_index, steps, attempt))

    def step_finished(self, round_index, node, call, value) -> None:
        self._call("failed", lambda: self.inner.step_finished(round_index, node, call, value))

    def event(self, event) -> None:
        self._call("failed", lambda: self.inner.event(event))

    def round_collected(self, result, records: Sequence) -> None:
        self._call("failed", lambda: self.inner.round_collected(result, records))

    def checkpoint_committed(self, state) -> None:
        self._call("failed", lambda: self.inner.checkpoint_committed(state))

    def run_finished(self, outcome: RunOutcome) -> None:
        if self.failed is not None:
            try:
                self.inner.run_finished(outcome)  # close files; it may fail again, quietly
            except Exception:
                pass
            return
        self._call("failed at the end", lambda: self.inner.run_finished(outcome))

    def _call(self, what: str, call: Callable[[], None]) -> None:
        if self.failed is not None:
            return
        try:
            call()
        except Exception as exc:  # a tracker must never take a run down (see the module)
            self.failed = exc
            self._warn(f"tracking: {self.name} {what}: {_reason(exc)}; the run goes on without it "
                       "(its own files are complete)")


def _warn(message: str) -> None:
    print(f"rayagg: warning: {message}", file=sys.stderr, flush=True)
