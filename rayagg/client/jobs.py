"""Runs as Ray Jobs: what ``rayagg submit`` sends and the calls behind ``rayagg jobs``.

A job's entrypoint is rayagg's own command line, ``python -m rayagg run``, on the
cluster. The config travels with the job, resolved and validated here, in the job's
environment variable RAYAGG_CONFIG_YAML (``rayagg run --config-from-env``), so the
cluster needs rayagg's code (installed, or shipped with ``--working-dir``) but no copy
of the config. The run directory is decided here and is always explicit and absolute
on the cluster: a job's working directory is temporary.

Ray 2.60 enables token auth: :func:`connect` prepares this process for it before Ray is
imported (rayagg/runtime/auth.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import shlex
import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rayagg.config import RunConfig
from rayagg.errors import JobError
from rayagg.runtime.auth import join_by_address
from rayagg.storage import is_uri

CONFIG_ENV = "RAYAGG_CONFIG_YAML"  # `rayagg run --config-from-env` reads the config from here
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
DEFAULT_BASE_DIR = "~/rayagg-runs"  # when output.base_dir is relative: it would land in the job's temp dir
# Never shipped with --working-dir: results, caches (Ray itself leaves out .git and .venv).
EXCLUDES = ["runs", "__pycache__", "*.pyc", ".pytest_cache"]
CONNECT_TIMEOUT_S = 10.0
POLL_S = 1.0
AGENT_WAIT_S = 60.0  # how long a submit waits for a freshly started head's job agent
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# The exit code of `rayagg submit --wait` for a job stopped without a driver exit code:
# what `rayagg run` itself returns when SIGTERM (the signal `ray job stop` sends) stops it.
STOPPED_EXIT = 143


@dataclass(frozen=True)
class Submission:
    """What a submit sends: the shell entrypoint, runtime_env, metadata, and the run
    directory as the cluster will see it (``~`` expanded there)."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    run_dir: str


def cluster_run_dir(config: RunConfig, out: Optional[str], stamp: str) -> str:
    """``out``, else ``output.base_dir``/<name>-<stamp> when base_dir is absolute or starts
    with ``~``, else ~/rayagg-runs/<name>-<stamp>. Raises JobError for a relative ``out``."""
    if out is not None:
        return cluster_path(out, "--out")
    base = config.output.base_dir if _cluster_absolute(config.output.base_dir) else DEFAULT_BASE_DIR
    return f"{base.rstrip('/')}/{config.name}-{stamp}"


def cluster_path(path: str, option: str) -> str:
    """``path`` when it means the same on the cluster (absolute, or ~/...); raises JobError
    naming ``option`` otherwise: it would resolve in the job's temporary working directory."""
    if not _cluster_absolute(path):
        raise JobError(f"{option} {path!r} is relative: on the cluster it would resolve in the job's "
                       "temporary working directory; give an absolute path (or one starting with ~) "
                       "on storage every machine of the cluster mounts")
    return path


def _cluster_absolute(path: str) -> bool:
    """Absolute, ``~/...``, or an object-store URI (``s3://``, ``gs://``: the same everywhere)."""
    return path.startswith(("/", "~")) or is_uri(path)


def submission(config: Optional[RunConfig], run_dir: str, *, resume: bool = False,
               rounds: Optional[int] = None, working_dir: Optional[str] = None,
               pip: tuple[str, ...] = (), verbose: bool = False,
               overrides: tuple[str, ...] = ()) -> Submission:
    """The job for a new run of ``config`` into ``run_dir``, or (``resume``) for continuing
    the run in ``run_dir`` with its own config.yaml (``config`` None), changed by the
    ``--set`` ``overrides`` (a new run's ``config`` has them applied already)."""
    args = ["python", "-m", "rayagg", "run"]
    args += ["--resume", run_dir] if resume else ["--config-from-env", "--out", run_dir]
    args += ["--address", "auto"]
    args += [arg for setting in overrides for arg in ("--set", setting)]
    args += ["--rounds", str(rounds)] if rounds is not None else []
    args += ["--verbose"] if verbose else []
    runtime_env: dict[str, Any] = {}
    if config is not None:
        runtime_env["env_vars"] = {CONFIG_ENV: config.to_yaml()}
    if working_dir is not None:
        runtime_env.update(working_dir=os.path.abspath(working_dir), excludes=list(EXCLUDES))
    if pip:
        runtime_env["pip"] = list(pip)
    metadata = {"rayagg": "run", "run_dir": run_dir, "config": config.name if config else ""}
    return Submission(" ".join(shlex.quote(arg) for arg in args), runtime_env, metadata, run_dir)


# ------------------------------------------------------------------ the job server

def default_address() -> str:
    """Where the job server is when --address is not given: $RAY_API_SERVER_ADDRESS, an
    http(s) $RAY_ADDRESS (as `ray job` reads them), else the local head's dashboard port."""
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")) or (value and name == "RAY_API_SERVER_ADDRESS"):
            return value
    return DEFAULT_ADDRESS


def job_server_url(address: str) -> str:
    """``address`` as an http URL (HOST:PORT gets http://). Raises JobError for a Ray GCS
    or client address, which the job server does not answer on."""
    if address.startswith(("ray://", "auto")):
        raise JobError(f"--address {address!r} is not a job server: give the dashboard's address, "
                       f"e.g. http://HEAD:8265")
    return address if "://" in address else f"http://{address}"


def connect(address: str):
    """A JobSubmissionClient for ``address``. Raises JobError naming it when nothing
    answers within CONNECT_TIMEOUT_S or Ray refuses the client (e.g. a missing token)."""
    url = job_server_url(address)
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise JobError(f"cannot reach Ray's job server at {url} within {CONNECT_TIMEOUT_S:g} s: {exc} "
                       "(is the head's dashboard up, and its port open to this machine?)") from exc
    _answers(url)
    join_by_address()  # before Ray is imported
    from ray.job_submission import JobSubmissionClient

    _quiet_client_logs()

    try:
        return JobSubmissionClient(url)
    except Exception as exc:  # ConnectionError, RuntimeError, auth errors from the client
        raise JobError(f"Ray's job server at {url} refused the client: {exc}") from exc


def _answers(url: str) -> None:
    """Returns when an HTTP server answers at ``url`` (any status: a 401 is the token's business).
    Raises JobError when none does within CONNECT_TIMEOUT_S: Ray's client sets no timeout, so
    a port that accepts but never answers (a wedged dashboard, the wrong service) hung it."""
    import requests  # what Ray's client uses: the same TLS checks and proxies

    try:
        requests.get(f"{url}/api/version", timeout=CONNECT_TIMEOUT_S).close()
    except requests.RequestException as exc:
        raise JobError(f"Ray's job server at {url} did not answer within {CONNECT_TIMEOUT_S:g} s: {exc} "
                       "(is it the head's dashboard port?)") from exc


def _quiet_client_logs() -> None:
    """Ray's job client logs each file it leaves out of a package and each closed log
    stream at INFO (one module sets that level itself), and a notice that .git and .venv
    are no longer shipped: none of it is the user's news."""
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray._private.runtime_env.working_dir").addFilter(_drop_default_excludes_notice)


def _drop_default_excludes_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Directory %r is now ignored by default")


def submit(client, job: Submission, retry_s: float = AGENT_WAIT_S) -> str:
    """Submits ``job``; returns its submission id. A head that has just started may answer
    before its job agent runs ("No available agent"): that is retried for ``retry_s``."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return client.submit_job(entrypoint=job.entrypoint, runtime_env=job.runtime_env,
                                     metadata=job.metadata)
        except Exception as exc:  # the server's refusal (bad runtime_env, working_dir too large, ...)
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise JobError(f"the job server refused the job: {exc}") from exc
        time.sleep(POLL_S)


def info(client, job_id: str):
    """The job's details (status, message, driver_exit_code, metadata). Raises JobError
    for an unknown id."""
    try:
        return client.get_job_info(job_id)
    except Exception as exc:  # the client raises RuntimeError "... does not exist"
        raise JobError(f"no job {job_id!r} on this cluster: {exc}") from exc


def exit_code(details) -> int:
    """What ``rayagg submit --wait`` exits with: 0 only for SUCCEEDED; the job driver's exit
    code for FAILED or STOPPED (2: an error rayagg named, 143: SIGTERM), else 1 for FAILED
    and 143 for STOPPED."""
    status = status_of(details)
    if status == "SUCCEEDED":
        return 0
    code = details.driver_exit_code
    if code:
        return int(code)
    return STOPPED_EXIT if status == "STOPPED" else 1


def follow(client, job_id: str, echo: Callable[[str], None]) -> Any:
    """Prints the job's logs as they come until it ends; returns its final details."""
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            echo(chunk.rstrip("\n"))
    asyncio.run(tail())
    details = info(client, job_id)
    while status_of(details) not in TERMINAL:  # the log stream may end just before the status
        time.sleep(POLL_S)
        details = info(client, job_id)
    return details


def status_of(details) -> str:
    return str(getattr(details.status, "value", details.status))


def rayagg_jobs(client, every: bool = False) -> list:
    """The jobs ``rayagg submit`` sent (``every``: all jobs), oldest first."""
    jobs = [job for job in client.list_jobs() if every or (job.metadata or {}).get("rayagg")]
    return sorted(jobs, key=lambda job: job.start_time or 0)
