"""A run directory's life: may a new run write here (overwrite protection), is a run
live in it, clearing it for --overwrite, and the start-up probe that every host sees it.
"""
from __future__ import annotations

import os
import pathlib
import secrets
import socket
from enum import Enum
from typing import Optional

from rayagg.errors import CheckpointError, RunDirError
from rayagg.files import write_atomic
from rayagg.storage import as_path, remove_tree
from rayagg.rundir.live import LIVE_FILE, boot_id, process_command, process_start, read_live
from rayagg.rundir.manifest import RunState, holds_run


def check_new_run_dir(path: pathlib.Path, overwrite: bool = False) -> None:
    """Raises RunDirError unless a new run may write to ``path``: it must not exist, be empty,
    or (with ``overwrite``) hold a rayagg run, which :func:`clear_run_dir` then removes.
    A non-empty directory that is not a run is never written to, even with ``overwrite``."""
    path = as_path(path)
    for ancestor in [path, *path.parents]:
        if ancestor.exists() and not ancestor.is_dir():
            raise RunDirError(f"cannot use {path} as a run directory: {ancestor} is a file")
    if not path.exists() or not any(path.iterdir()):
        check_writable(path)
        return
    if not holds_run(path):
        raise RunDirError(f"{path} is not empty and holds no rayagg run: choose a new or empty "
                          "directory (rayagg never writes into, or clears, other directories)")
    check_not_live(path)
    if not overwrite:
        raise RunDirError(f"{path} already holds a run ({describe_progress(path)}): continue it with "
                          f"--resume {path}, or replace it with --overwrite")


def check_writable(path: pathlib.Path) -> None:
    """RunDirError naming ``path`` and the reason unless a run can create it (with its
    missing parents) and write into it. What the check creates it removes again: a run
    that never starts (a cluster that does not answer) leaves nothing behind."""
    path = as_path(path)
    created = [p for p in [path, *path.parents] if not p.exists()]
    probe = path / f".rayagg-probe-{secrets.token_hex(4)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"cannot create or write the run directory {path}: "
                          f"{exc.strerror or exc}") from exc
    finally:
        for directory in created:  # deepest first
            try:
                directory.rmdir()
            except OSError:
                pass


def check_not_live(path: pathlib.Path) -> None:
    """RunDirError when a run may still be training in ``path`` (its live record names a
    process that runs, or one on another machine): no second run may write there."""
    live = read_live(path)
    if live is None:
        return
    state, why = driver_state(live)
    if state == DriverState.GONE:
        return  # the record of a run that crashed before it could remove it
    if state == DriverState.ELSEWHERE:
        raise RunDirError(f"a run may be training in {path}: {why}; stop it there first (if it is gone, "
                          f"delete {path / LIVE_FILE})")
    raise RunDirError(f"a run is training in {path} (pid {live.get('pid')}): stop it first (if it is gone, "
                      f"delete {path / LIVE_FILE})")


class DriverState(str, Enum):
    """What a live record's driver is, as seen from this machine."""

    LIVE = "live"  # its process runs here
    GONE = "gone"  # it ran here and does not any more
    ELSEWHERE = "elsewhere"  # it runs (or ran) on another machine: not checked from here


def driver_state(live: dict) -> tuple[DriverState, str]:
    """Whether the driver a live record names still runs, and why in a few words.

    A record from another machine (another host name) cannot be judged from here. On
    this machine the driver is gone when its pid runs no process, when the machine
    booted again since (another boot id), or when the pid now belongs to another process:
    one that started at another time than the recorded driver or, for a record without
    a start time (written before rayagg recorded it), one that runs neither Python nor
    rayagg (pid 1, say). Without /proc only the pid can be checked."""
    pid, host = live.get("pid"), live.get("hostname")
    if host != socket.gethostname():
        return DriverState.ELSEWHERE, (f"its driver, pid {pid}, is on another machine ({host}) and cannot be "
                                       "checked from here")
    recorded_boot = live.get("boot_id")
    if recorded_boot is not None and boot_id() is not None and recorded_boot != boot_id():
        return DriverState.GONE, f"its driver (pid {pid}) is gone: this machine has restarted since"
    if not _process_exists(pid):
        return DriverState.GONE, f"its driver (pid {pid}) is gone"
    if "started" in live:
        started = process_start(pid)
        if started is not None and started != live["started"]:
            return DriverState.GONE, (f"its driver (pid {pid}) is gone: pid {pid} is now another process "
                                      "(it started at another time)")
    else:
        command = process_command(pid)
        if command is not None and not any(_is_driver_word(part) for part in command):
            return DriverState.GONE, (f"its driver (pid {pid}) is gone: pid {pid} is now another process "
                                      f"({pathlib.PurePath(command[0]).name if command else 'a kernel thread'})")
    return DriverState.LIVE, f"driver pid {pid} on {host}"


def _is_driver_word(part: str) -> bool:
    name = pathlib.PurePath(part).name
    return "python" in name or "rayagg" in name


def driver_gone(live: dict) -> bool:
    """True when a live record names a driver process on this machine that no longer runs
    (see :func:`driver_state`); a driver elsewhere cannot be checked."""
    return driver_state(live)[0] == DriverState.GONE


def _process_exists(pid) -> bool:
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_run_dir(path: pathlib.Path) -> None:
    """Removes a run directory's contents (only after :func:`check_new_run_dir` allowed it)."""
    path = as_path(path)
    if path.is_dir():
        for child in path.iterdir():
            remove_tree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def describe_progress(path: pathlib.Path) -> str:
    """A few words on how far a run directory got, e.g. 'last checkpoint: round 3'."""
    try:
        return f"last checkpoint: round {RunState.load(path).round}"
    except CheckpointError:
        return "no valid checkpoint"



PROBE_FILE = ".rayagg-probe"


def start_probe(run_dir: pathlib.Path) -> str:
    """Writes a fresh token to RUN_DIR/.rayagg-probe for :func:`probe_run_dir`; returns it."""
    token = secrets.token_hex(8)
    write_atomic(as_path(run_dir) / PROBE_FILE, token.encode())
    return token


def probe_run_dir(run_dir: str | pathlib.Path, token: str, who: str) -> Optional[str]:
    """Run by each host actor at start-up, on whichever machine it landed: None when it sees
    the driver's probe (so RUN_DIR is the same directory there) and can write beside it
    (it writes its nodes' checkpoints there), else why not, naming ``who``. On an object
    store (``run_dir`` a URI) the host opens the store with its own environment's
    credentials and endpoint: a machine without them, or that cannot reach the store, fails here."""
    try:
        path = as_path(run_dir) / PROBE_FILE
        seen = path.read_text()
    except FileNotFoundError:
        return f"{who} does not see {path}, which the driver wrote: {run_dir} is another directory there"
    except (OSError, RunDirError) as exc:
        return f"{who} cannot read {as_path(run_dir) / PROBE_FILE}: {exc}"
    if seen != token:
        return f"{who} sees another token in {path}: {run_dir} is another directory there"
    mine = path.with_name(f"{PROBE_FILE}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        mine.write_bytes(token.encode())
        mine.unlink()
    except OSError as exc:
        return f"{who} cannot write to {run_dir}: {exc}"
    return None


def end_probe(run_dir: pathlib.Path) -> None:
    (as_path(run_dir) / PROBE_FILE).unlink(missing_ok=True)
