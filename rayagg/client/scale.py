"""Talking to a live run from outside it: ``rayagg scale RUN_DIR``.

A Ray run records in RUN_DIR/live.json where it can be reached (its cluster's GCS
address and its namespace) while it trains, and removes the record when it ends. The
request goes to the run's supervisor actor, which holds it until the next round
boundary (on an autoscaling cluster it asks the autoscaler for the new devices' machines
at once: docs/elastic.md); the run's answer says what will happen then.
"""
from __future__ import annotations

import pathlib
from typing import Optional

from rayagg.core.membership import ScaleReply
from rayagg.errors import ClusterError, RunDirError, ScaleError
from rayagg.rundir.live import LIVE_FILE, read_live
from rayagg.rundir.manifest import CONFIG_FILE, RunState, holds_run, missing_manifest
from rayagg.runtime.auth import join_by_address
from rayagg.storage import as_path

ANSWER_TIMEOUT_S = 30.0


def scale(run_dir: str | pathlib.Path, *, devices: Optional[int] = None, add: Optional[int] = None,
          remove: Optional[int] = None) -> str:
    """Asks the live run in ``run_dir`` for ``devices`` active devices (or ``add`` / ``remove``
    some) from its next round boundary; returns the run's answer at once (it does not
    wait for the boundary).

    Raises ScaleError when the run finished, is not live (not started, stopped, crashed),
    is not elastic, or the count is outside the tier's range; RunDirError when
    ``run_dir`` is no run directory. A process that has not imported Ray yet is prepared
    for the cluster's token auth first (rayagg/runtime/auth.py); one already connected
    to the run's cluster uses that connection.
    """
    if [devices, add, remove].count(None) != 2:
        raise ScaleError("give exactly one of devices, add or remove")
    if any(value is not None and value < 0 for value in (devices, add, remove)):
        raise ScaleError("devices, add and remove must not be negative")
    run_dir = as_path(run_dir)
    join_by_address()  # before Ray is imported
    if not holds_run(run_dir):
        raise RunDirError(missing_manifest(run_dir))
    live = read_live(run_dir)
    if live is None:
        raise ScaleError(_why_not_live(run_dir))
    import ray

    joined = not ray.is_initialized()
    try:
        answer = _ask(_supervisor(live, run_dir), devices, add, remove, live)
    finally:
        if joined and ray.is_initialized():
            ray.shutdown()  # leaves the cluster; the run is not affected
    if not answer.accepted:
        raise ScaleError(f"{run_dir}: refused: {answer.message}")
    return answer.message


def _why_not_live(run_dir: pathlib.Path) -> str:
    from rayagg.config import load_config

    try:
        state = RunState.load(run_dir)
        rounds = load_config(run_dir / CONFIG_FILE).training.rounds
    except Exception:  # no checkpoint or config yet: say so without guessing
        return f"{run_dir}: the run is not live (no {LIVE_FILE}: it has not started or it stopped)"
    if state.round >= rounds:
        return f"{run_dir}: the run finished (round {state.round} of {rounds}): there is nothing to scale"
    return (f"{run_dir}: the run is not live (stopped after round {state.round} of {rounds}); "
            f"continue it with `rayagg run --resume {run_dir}` and scale it then")


def _supervisor(live: dict, run_dir: pathlib.Path):
    import ray

    from rayagg.runtime.cluster import connect

    if not ray.is_initialized():
        try:
            connect(live["address"])
        except ClusterError as exc:
            raise ScaleError(f"{run_dir}: the run is not live: its Ray cluster does not answer ({exc}); "
                             "it may have crashed (resume it with `rayagg run --resume`)") from exc
    try:
        return ray.get_actor("supervisor", namespace=live["namespace"])
    except ValueError as exc:
        raise ScaleError(f"{run_dir}: the run is not live: its cluster at {live['address']} has no "
                         f"namespace {live['namespace']!r} (the run ended or crashed)") from exc


def _ask(supervisor, devices, add, remove, live: dict) -> ScaleReply:
    import ray
    from ray import exceptions as ray_errors

    try:
        return ray.get(supervisor.request_scale.remote(devices, add, remove), timeout=ANSWER_TIMEOUT_S)
    except ray_errors.GetTimeoutError as exc:
        raise ScaleError(f"the run's supervisor did not answer within {ANSWER_TIMEOUT_S:g} s") from exc
    except ray_errors.RayActorError as exc:
        raise ScaleError(f"the run in namespace {live['namespace']!r} ended while asked") from exc
