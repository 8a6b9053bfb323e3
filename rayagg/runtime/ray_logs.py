"""What Ray may print on a run's terminal, and where Ray's own logs go instead.

By default a run shows rayagg's lines only. Ray's log files stay where Ray writes them
(this machine's session log directory, linked from RUN_DIR/ray-logs by :func:`keep_logs`;
other machines' logs stay on those machines and on the dashboard), and ``--verbose`` shows
Ray's output as it comes, as before. What a quiet run hides, and why (Ray 2.60):

- worker processes' stdout/stderr, forwarded as "(Host pid=...)" lines:
  ``ray.init(log_to_driver=False)``. rayagg's failures do not need them: an actor's
  exception reaches the driver through ``ray.get`` (waiting.py turns it into NodeError).
- the driver-side notice "Token authentication is enabled for this Ray cluster" (logger
  ``ray._private.authentication.authentication_token_setup``, logged by ray.init whenever
  RAY_AUTH_MODE is unset): dropped by a filter on that logger. Setting RAY_AUTH_MODE=token
  before ``import ray`` also silences it, but connect() runs after the import.
- "(raylet) ..." notices that raylets push to every driver (Ray prints them from
  ``ray._private.worker.listen_error_messages`` whatever log_to_driver says, and offers no
  switch for them): routed through :func:`in_rayagg_words` by replacing
  ``ray._private.worker.print_to_stdstream`` for "raylet" lines only, and written in full to
  RUN_DIR/ray-notices.log. If a later Ray renames that function, the notices print as Ray
  prints them: nothing is lost.
"""
from __future__ import annotations

import datetime
import functools
import logging
import os
import pathlib
import socket
import sys
import threading
from typing import Any, Callable, Optional

from rayagg.storage import is_uri

LOGS_LINK = "ray-logs"  # RUN_DIR/ray-logs -> this machine's Ray session log directory
NOTICES_FILE = "ray-notices.log"  # RUN_DIR/ray-notices.log: raylet notices a quiet run did not print
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"
# Raylet notices rayagg expects or already reports itself, so a quiet run does not print them.
EXPECTED_NOTICES = (
    # Ray's "worker_pool_large": rayagg packs many fractional-CPU host actors per machine by design.
    "worker processes have been started on node",
    # Ray's "worker_died": rayagg names every node death itself (NodeDiedError, [died] events).
    "A worker died or was killed",
)
LOW_MEMORY = "running low on memory"  # the raylet's memory monitor killed workers
HELD_NOTICES = 1000  # notices kept in memory before RUN_DIR is known (the oldest are dropped)


def to_stderr(message: str) -> None:
    """The default way a quiet run shows a notice: a line on stderr, like rayagg's own."""
    print(message, file=sys.stderr, flush=True)


def init_options(verbose: bool) -> dict[str, Any]:
    """The logging arguments for ``ray.init``: Ray's driver-side warnings and errors either
    way (logging_level), worker output forwarded to this terminal only when ``verbose``."""
    return {"logging_level": "WARNING", "log_to_driver": verbose}


def quiet(on: bool, notify: Callable[[str], None] = to_stderr) -> bool:
    """Before ``ray.init``: ``on`` hides the token-auth notice and sends raylet notices to
    :func:`in_rayagg_words` (shown with ``notify``) and RUN_DIR/ray-notices.log; ``on=False``
    undoes both, so Ray prints everything as it does by itself. Quiet notices are held in
    memory until :func:`keep_logs` names the run's file. Returns False when this Ray has
    no ``print_to_stdstream`` to take raylet notices from (they then print as Ray's)."""
    auth = logging.getLogger(AUTH_LOGGER)
    if on:
        auth.addFilter(_drop_token_notice)  # adding the same filter twice keeps one
    else:
        auth.removeFilter(_drop_token_notice)
    NOTICES.notify = notify
    NOTICES.write_to(None)  # a new connection's notices belong to the next keep_logs' RUN_DIR
    return _route_raylet_notices(on)


def _drop_token_notice(record: logging.LogRecord) -> bool:
    # Only the "enabled" notice: "Token authentication is disabled ..." is a security warning.
    return not record.getMessage().startswith(TOKEN_AUTH_NOTICE)


def _route_raylet_notices(on: bool) -> bool:
    try:
        from ray._private import worker
    except ImportError:
        return False
    current = getattr(worker, "print_to_stdstream", None)
    if current is None:
        return False
    original = getattr(current, "__wrapped__", current)  # ours wraps Ray's

    @functools.wraps(original)
    def print_to_stdstream(data, ignore_prefix=False):
        # Ray's thread calls this for every "(raylet)" notice: it must never raise.
        try:
            if isinstance(data, dict) and data.get("pid") == "raylet":
                NOTICES.take(data.get("lines") or [])
                return None
        except Exception:  # a notice we cannot handle is printed as Ray prints it
            pass
        return original(data, ignore_prefix)

    worker.print_to_stdstream = print_to_stdstream if on else original
    return True


def in_rayagg_words(notice: str) -> Optional[str]:
    """The line a quiet run shows for a raylet notice, or None when rayagg expects it or
    reports it itself. Low memory gets rayagg's warning; anything else is shown as Ray's
    first line, prefixed so that it reads as reported through rayagg."""
    text = notice.strip()
    if not text or any(expected in text for expected in EXPECTED_NOTICES):
        return None
    first = text.splitlines()[0]
    if LOW_MEMORY in text:
        return ("rayagg: warning: a Ray machine ran low on memory and Ray killed worker processes "
                f"there; their nodes die or restart (fewer or smaller nodes per machine help). Ray: {first}")
    return f"rayagg: Ray reports: {first}"


class RayletNotices:
    """Raylet notices a quiet run did not print as Ray does: shown in rayagg's words through
    ``notify``, and appended in full to a file once :meth:`write_to` names one (held in
    memory until then). Ray's listener thread calls :meth:`take`."""

    def __init__(self) -> None:
        self.notify: Callable[[str], None] = to_stderr
        self._path: Optional[pathlib.Path] = None
        self._held: list[str] = []
        self._lock = threading.Lock()

    def take(self, lines: list[str]) -> None:
        """Records each notice and shows those that matter (see :func:`in_rayagg_words`)."""
        for line in lines:
            self._record(f"{_now()} {line}")
            message = in_rayagg_words(line)
            if message is not None:
                where = f"; all of it in {self._path}" if self._path and "\n" in line.strip() else ""
                self.notify(message + where)

    def write_to(self, path: Optional[pathlib.Path], header: str = "") -> None:
        """Appends ``header`` and the held notices to ``path``, and every later notice;
        None holds them in memory again."""
        with self._lock:
            self._path = path
            if path is not None:
                _append(path, ([header] if header else []) + self._held)
                self._held = []

    def _record(self, entry: str) -> None:
        with self._lock:
            if self._path is None:
                self._held = (self._held + [entry])[-HELD_NOTICES:]
                return
            path = self._path
        _append(path, [entry])


NOTICES = RayletNotices()


def keep_logs(run_dir: pathlib.Path) -> Optional[pathlib.Path]:
    """After Ray is connected: links RUN_DIR/ray-logs to this machine's Ray session log
    directory (replacing an older link, e.g. a resumed run's previous session) and starts
    RUN_DIR/ray-notices.log with a line naming the session and its log directory.

    Returns the link, or None when it was not made: this process has no Ray log directory
    on this machine (Ray Client, ray://), or RUN_DIR/ray-logs is not a link (left as is).
    A link rather than a copy: a tree's log directory holds 3 files per actor process
    and Ray keeps writing them until the end; linking costs nothing and never goes stale.
    A run directory on an object store gets neither (no links there, no appends): None.
    """
    if is_uri(run_dir):
        return None
    run_dir = pathlib.Path(run_dir)
    logs = session_logs_dir()
    header = f"# {_now()} Ray session logs on {socket.gethostname()}: {logs or 'not on this machine'}"
    NOTICES.write_to(run_dir / NOTICES_FILE, header)
    link = run_dir / LOGS_LINK
    if logs is None or (link.exists() and not link.is_symlink()):
        return None
    temporary = run_dir / f".{LOGS_LINK}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(logs, target_is_directory=True)
    os.replace(temporary, link)  # atomic: a reader sees the old link or the new one
    return link


def session_logs_dir() -> Optional[pathlib.Path]:
    """This machine's log directory of the connected Ray session
    (<temp dir>/<session name>/logs, as Ray's logging docs lay it out), or None when it is
    not here (Ray Client) or Ray is not connected."""
    import ray

    try:
        context = ray.get_runtime_context()
        logs = pathlib.Path(context.get_temp_dir()) / context.get_session_name() / "logs"
    except Exception:  # not connected, or a Ray Client context without these
        return None
    return logs if logs.is_dir() else None


def _append(path: pathlib.Path, entries: list[str]) -> None:
    if entries:
        with open(path, "a", encoding="utf-8") as out:
            out.write("".join(entry.rstrip("\n") + "\n" for entry in entries))


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")
