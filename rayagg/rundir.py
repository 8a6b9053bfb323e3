"""The run directory: its manifest (state.json), overwrite protection, resume checks.

A checkpoint is a consistent cut: every live node's state after one round, nothing
later. The node files of round r go to ``checkpoints/round-<r>/``; the cut becomes
visible only when ``state.json`` (the manifest) is replaced atomically to name them,
with the SHA-256 of every file a resume reads. A crash or a second signal while a cut
is written leaves the previous manifest, and so the previous cut, intact. The
manifest carries its own checksum; a resume verifies it and every listed file before
Ray starts or any file changes.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import shutil
import socket
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Optional

from rayagg.errors import CheckpointError, ConfigError, RunDirError
from rayagg.events import Event, read_events
from rayagg.files import file_sha256, sha256_bytes, write_atomic
from rayagg.metrics import NodeMetrics, read_metrics
from rayagg.tree import Tree

if TYPE_CHECKING:  # plan imports torch; reading a manifest does not need it
    from rayagg.config import RunConfig
    from rayagg.plan import Plan

FORMAT = 3  # 3 added ``left``; a format-2 manifest reads as one where no device left
_READABLE_FORMATS = (2, 3)
STATE_FILE = "state.json"
LIVE_FILE = "live.json"  # while a Ray run trains: where to reach it (rayagg scale)
# What rayagg writes into a run directory: any of these marks the directory as a run.
RUN_FILES = (STATE_FILE, "config.yaml", "metrics.parquet", "events.parquet", "checkpoints", "bridge",
             LIVE_FILE)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RunState:
    """The manifest of the last complete checkpoint.

    ``round`` is the last round it holds (0: the nodes' seeded initial state, written once
    the bridge samples are stored); ``parent_of`` and ``dead`` the tree as it was then
    (after any re-parenting and every join: an elastic device is in it once it joined);
    ``left`` the elastic devices that left (they are also in ``dead``: not running);
    ``checkpoints`` each node's checkpoint file, relative to the run directory (a dead or
    left node keeps its last one; a node without one starts from its seed); ``digests``
    the SHA-256 of every file a resume reads, the bridge-sample stores among them.
    """

    round: int
    parent_of: dict
    dead: list
    checkpoints: dict = field(default_factory=dict)
    digests: dict = field(default_factory=dict)
    left: list = field(default_factory=list)

    def save(self, run_dir: pathlib.Path) -> None:
        """Replaces RUN_DIR/state.json atomically and durably: this is the commit of a cut."""
        body = asdict(self)
        record = {"format": FORMAT, **body, "sha256": sha256_bytes(_canonical(body))}
        write_atomic(pathlib.Path(run_dir) / STATE_FILE, json.dumps(record, indent=1).encode())

    @classmethod
    def load(cls, run_dir: pathlib.Path) -> "RunState":
        """Reads and verifies RUN_DIR/state.json; CheckpointError naming the file and the cause."""
        run_dir = pathlib.Path(run_dir)
        path = run_dir / STATE_FILE
        if not path.is_file():
            raise CheckpointError(missing_manifest(run_dir))
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is corrupt: not readable JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise CheckpointError(f"{path} is corrupt: not a JSON object")
        if record.get("format") not in _READABLE_FORMATS:
            raise CheckpointError(f"{path} has format {record.get('format')!r}, expected {FORMAT}: "
                                  "written by another rayagg version, which this one cannot resume")
        body = {key: value for key, value in record.items() if key not in ("format", "sha256")}
        if record.get("sha256") != sha256_bytes(_canonical(body)):
            raise CheckpointError(f"{path} is corrupt: its checksum does not match its content")
        try:
            state = cls(**body)
        except TypeError as exc:
            raise CheckpointError(f"{path} is corrupt: {exc}") from exc
        state._check_shape(path)
        return state

    def located(self, node: str, run_dir: pathlib.Path) -> Optional[tuple[pathlib.Path, str]]:
        """(path, SHA-256) of ``node``'s checkpoint in this cut, or None if it has none."""
        relative = self.checkpoints.get(node)
        if relative is None:
            return None
        return pathlib.Path(run_dir) / relative, self.digests[relative]

    def digest_of(self, path: pathlib.Path, run_dir: pathlib.Path) -> Optional[str]:
        """The SHA-256 this cut records for the file at ``path``, or None if it lists none."""
        return self.digests.get(manifest_key(path, run_dir))

    def bridge_stores(self, run_dir: pathlib.Path) -> dict[pathlib.Path, str]:
        """The bridge-sample stores this cut lists (path -> SHA-256): the one written at
        start and one per round in which devices joined."""
        return {pathlib.Path(run_dir) / relative: digest for relative, digest in sorted(self.digests.items())
                if pathlib.PurePath(relative).parts[0] == "bridge"}

    def tree(self, like: Tree) -> Tree:
        """The checkpoint's tree (with the tiers of ``like``): it may hold devices that
        joined after the run started."""
        return Tree.from_parents(like.tier_names, self.parent_of)

    def _check_shape(self, path: pathlib.Path) -> None:
        ok = (isinstance(self.round, int) and self.round >= 0 and isinstance(self.parent_of, dict)
              and isinstance(self.dead, list) and isinstance(self.checkpoints, dict)
              and isinstance(self.digests, dict) and isinstance(self.left, list)
              and set(self.left) <= set(self.dead)
              and all(isinstance(d, str) and _SHA256.match(d) for d in self.digests.values())
              and all(p in self.digests for p in self.checkpoints.values()))
        if not ok:
            raise CheckpointError(f"{path} is corrupt: fields have unexpected types or values")


def manifest_key(path: pathlib.Path, run_dir: pathlib.Path) -> str:
    """How the manifest names a file of the run: its path relative to the run directory."""
    return str(pathlib.Path(path).resolve().relative_to(pathlib.Path(run_dir).resolve()))


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def missing_manifest(run_dir: pathlib.Path) -> str:
    """Why ``run_dir`` has no manifest, as the message of a CheckpointError or a status line."""
    stray = sorted((run_dir / "checkpoints").rglob("*.pt")) if (run_dir / "checkpoints").is_dir() else []
    if stray:
        return (f"{run_dir / STATE_FILE} is missing although {run_dir / 'checkpoints'} holds "
                f"{len(stray)} checkpoint file(s): without the manifest rayagg cannot tell which "
                "of them form a complete checkpoint, and it will not guess")
    if holds_run(run_dir):
        return (f"{run_dir} has no checkpoint: the run stopped or failed while starting, before "
                f"its first checkpoint; nothing to resume (start it again with --overwrite)")
    return f"{run_dir} is not a rayagg run directory (no {STATE_FILE}, no config.yaml)"


# ------------------------------------------------------------------ live runs

def write_live(run_dir: pathlib.Path, address: str, namespace: str, pid: int, hostname: str,
               view: Optional[dict] = None) -> None:
    """Records where the run training in ``run_dir`` can be reached: its Ray cluster's GCS
    address and the run's namespace (its supervisor actor is ``supervisor`` there), and
    the tree as it is now (``view``: rayagg/live.py) for ``rayagg status``."""
    record = {"address": address, "namespace": namespace, "pid": pid, "hostname": hostname,
              **({"view": view} if view is not None else {})}
    write_atomic(pathlib.Path(run_dir) / LIVE_FILE, json.dumps(record, indent=1).encode())


def read_live(run_dir: pathlib.Path) -> Optional[dict]:
    """The live record of ``run_dir``, or None when no run trains there (or it crashed
    before it could remove the record: the caller finds nothing at the address)."""
    path = pathlib.Path(run_dir) / LIVE_FILE
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is corrupt: {exc}") from exc
    if not isinstance(record, dict) or not {"address", "namespace"} <= set(record):
        raise RunDirError(f"{path} is corrupt: it lacks the address or the namespace")
    return record


def clear_live(run_dir: pathlib.Path) -> None:
    (pathlib.Path(run_dir) / LIVE_FILE).unlink(missing_ok=True)


# ------------------------------------------------------------------ shared storage

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


# ------------------------------------------------------------------ run directories

def holds_run(path: pathlib.Path) -> bool:
    """True if ``path`` has any file rayagg writes into a run directory."""
    return any((pathlib.Path(path) / name).exists() for name in RUN_FILES)


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


def prune_checkpoints(run_dir: pathlib.Path, state: RunState) -> None:
    """Deletes round directories older than ``state``'s round that it does not reference
    (older cuts, and cuts abandoned half-written); a dead node's last checkpoint stays
    while it is listed. Newer directories stay: a later round in flight may be writing
    there (``runtime.rounds_in_flight``); the next committed cut past them prunes them."""
    kept = {pathlib.PurePath(p).parent.name for p in state.checkpoints.values()}
    root = pathlib.Path(run_dir) / "checkpoints"
    for directory in root.glob("round-*") if root.is_dir() else []:
        number = directory.name.removeprefix("round-")
        newer = number.isdigit() and int(number) > state.round
        if directory.is_dir() and directory.name not in kept and not newer:
            shutil.rmtree(directory, ignore_errors=True)


def round_directory(run_dir: pathlib.Path, round_index: int) -> pathlib.Path:
    return pathlib.Path(run_dir) / "checkpoints" / f"round-{round_index:04d}"


# ------------------------------------------------------------------ resuming

def check_resumable_config(stored: "RunConfig", given: "RunConfig") -> None:
    """Raises ConfigError unless ``given`` may continue a run made with ``stored``: only
    training.rounds, the runtime, supervision and output sections, the autoencoder cache folder and
    each tier's resources and nodes_per_actor may change (where nodes run, e.g. on another
    cluster; everything else decides what the checkpoints mean)."""
    def fixed(config: "RunConfig") -> dict:
        raw = config.model_dump()
        raw["training"].pop("rounds")
        raw["autoencoder"].pop("cache_dir")
        for tier in raw["tree"]["tiers"]:
            tier.pop("resources")
            tier.pop("nodes_per_actor")
        for section in ("runtime", "supervision", "output"):
            raw.pop(section)
        return raw

    old, new = fixed(stored), fixed(given)
    changed = sorted(key for key in old if old[key] != new.get(key))
    if changed:
        raise ConfigError(f"CONFIG differs from the run's config.yaml in {', '.join(changed)}: a "
                          "resumed run may change only training.rounds, runtime, supervision, output and the "
                          "tiers' resources and nodes_per_actor")


def load_for_resume(run_dir: pathlib.Path, plan: "Plan") -> RunState:
    """Verifies everything a resume of ``run_dir`` with ``plan`` will read, before anything
    starts or changes: the manifest, every file it lists (by SHA-256), the bridge-sample
    store, metrics and events, and that the tree and the round count fit. Returns the
    manifest; raises CheckpointError (or ConfigError) naming the file or the setting."""
    from rayagg import store  # imports torch, which reading a manifest does not need

    run_dir = pathlib.Path(run_dir)
    check_not_live(run_dir)
    state = RunState.load(run_dir)
    _check_tree_fits(state, plan, run_dir / STATE_FILE)
    rounds = plan.config.training.rounds
    if state.round >= rounds:
        raise ConfigError(f"{run_dir} already finished round {state.round} of {rounds}: "
                          "nothing to resume (give --rounds N with N > "
                          f"{state.round} to train further)")
    for relative, digest in state.digests.items():
        if file_sha256(run_dir / relative) != digest:
            raise CheckpointError(f"{run_dir / relative} is corrupt: its SHA-256 differs from the "
                                  f"one recorded in {STATE_FILE} (truncated, altered or replaced)")
    stores = state.bridge_stores(run_dir)
    if stores:  # their digests were verified just above
        store.read_bridge_stores(list(stores), expected_counts=expected_bridge_counts(state, plan))
    earlier_records(run_dir, state.round)
    earlier_events(run_dir)
    return state


def _check_tree_fits(state: RunState, plan: "Plan", path: pathlib.Path) -> None:
    """The checkpoint's tree must be CONFIG's: the same nodes, except that an elastic
    tier's devices may be any that CONFIG's range allows."""
    nodes, expected = set(state.parent_of), set(plan.tree.nodes)
    if plan.config.tree.elastic is not None:
        leaves = set(plan.tree.nodes_of_tier(len(plan.tree.tier_names) - 1))
        fits = nodes - set(plan.shards) == expected - leaves and nodes & set(plan.shards)
    else:
        fits = nodes == expected
    if not fits:
        raise CheckpointError(f"{path}: the checkpoint's tree ({len(nodes)} nodes) is not CONFIG's "
                              f"tree ({len(expected)} nodes)")


def expected_bridge_counts(state: RunState, plan: "Plan") -> dict[str, int]:
    """leaf -> bridge samples, for every leaf of the checkpoint's tree (devices that joined
    later encoded then; those that never joined have none)."""
    return {leaf: len(plan.shards[leaf]) for leaf in state.parent_of if leaf in plan.shards}


def earlier_records(run_dir: pathlib.Path, last_round: int) -> list[NodeMetrics]:
    """The metrics of rounds up to ``last_round`` (those a resume keeps); CheckpointError if
    metrics.parquet is corrupt or lacks one of those rounds."""
    path = pathlib.Path(run_dir) / "metrics.parquet"
    if last_round == 0:
        return []
    records = [r for r in read_metrics(path) if r.round <= last_round]
    missing = sorted(set(range(1, last_round + 1)) - {r.round for r in records})
    if missing:
        raise CheckpointError(f"metrics file {path} lacks round(s) {missing} of the checkpoint")
    return records


def earlier_events(run_dir: pathlib.Path) -> list[Event]:
    path = pathlib.Path(run_dir) / "events.parquet"
    return read_events(path) if path.is_file() else []
