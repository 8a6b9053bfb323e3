"""A run directory's life: may a new run write here (overwrite protection), is a run
live in it, clearing it for --overwrite, and the start-up probe that every host sees it.
"""
from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import socket
from typing import Optional

from rayagg.errors import CheckpointError, RunDirError
from rayagg.files import write_atomic
from rayagg.rundir.live import LIVE_FILE, read_live
from rayagg.rundir.manifest import RunState, holds_run


def check_new_run_dir(path: pathlib.Path, overwrite: bool = False) -> None:
    """Raises RunDirError unless a new run may write to ``path``: it must not exist, be empty,
    or (with ``overwrite``) hold a rayagg run, which :func:`clear_run_dir` then removes.
    A non-empty directory that is not a run is never written to, even with ``overwrite``."""
    path = pathlib.Path(path)
    for ancestor in [path, *path.parents]:
        if ancestor.exists() and not ancestor.is_dir():
            raise RunDirError(f"cannot use {path} as a run directory: {ancestor} is a file")
    if not path.exists() or not any(path.iterdir()):
        return
    if not holds_run(path):
        raise RunDirError(f"{path} is not empty and holds no rayagg run: choose a new or empty "
                          "directory (rayagg never writes into, or clears, other directories)")
    check_not_live(path)
    if not overwrite:
        raise RunDirError(f"{path} already holds a run ({describe_progress(path)}): continue it with "
                          f"--resume {path}, or replace it with --overwrite")


def check_not_live(path: pathlib.Path) -> None:
    """RunDirError when a run may still be training in ``path`` (its live record names a
    process that runs, or one on another machine): no second run may write there."""
    live = read_live(path)
    if live is None or driver_gone(live):
        return  # no record, or the record of a run that crashed before it could remove it
    here = live.get("hostname") == socket.gethostname()
    where = f"pid {live.get('pid')}" + ("" if here else f" on {live.get('hostname')}")
    raise RunDirError(f"a run is training in {path} ({where}): stop it first (if it is gone, "
                      f"delete {path / LIVE_FILE})")


def driver_gone(live: dict) -> bool:
    """True when a live record names a driver process on this machine that no longer runs
    (it crashed before it could remove the record); a driver elsewhere cannot be checked."""
    return live.get("hostname") == socket.gethostname() and not _process_exists(live.get("pid"))


def _process_exists(pid) -> bool:
    if not isinstance(pid, int):
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
    path = pathlib.Path(path)
    if path.is_dir():
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


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
    write_atomic(pathlib.Path(run_dir) / PROBE_FILE, token.encode())
    return token


def probe_run_dir(run_dir: str | pathlib.Path, token: str, who: str) -> Optional[str]:
    """Run by each host actor at start-up, on whichever machine it landed: None when it sees
    the driver's probe (so RUN_DIR is the same directory there) and can write beside it
    (it writes its nodes' checkpoints there), else why not, naming ``who``."""
    path = pathlib.Path(run_dir) / PROBE_FILE
    try:
        seen = path.read_text()
    except FileNotFoundError:
        return f"{who} does not see {path}, which the driver wrote: {run_dir} is another directory there"
    except OSError as exc:
        return f"{who} cannot read {path}: {exc}"
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
    (pathlib.Path(run_dir) / PROBE_FILE).unlink(missing_ok=True)
