"""RUN_DIR/state.json: the manifest of the last consistent cut, and the checkpoint
directories it names.

A checkpoint is a consistent cut: every live node's state after one round, nothing
later. The node files of round r go to ``checkpoints/round-<r>/``; the cut becomes
visible only when ``state.json`` (the manifest) is replaced atomically to name them,
with the SHA-256 and size of every file a resume reads, and how many events
events.parquet held then. A crash or a second signal while a cut is written leaves the
previous manifest, and so the previous cut, intact. The manifest carries its own
checksum; a resume verifies it and every listed file before Ray starts or any file
changes (rayagg/rundir/resume.py); ``rayagg status`` verifies the files too.

On an object store (RUN_DIR a URI, rayagg/storage.py) nothing can be renamed: every file
is one whole-object write, the node files and stores first, the manifest last. That is a
commit too, because a reader trusts only what the manifest lists (with its SHA-256 and
size) and a listed object is never written again: a cut of round r lists files of rounds
up to r, every later write goes to a round after the manifest's, and the bridge-sample
stores (per root, per join round) are written once before any cut lists them. Names of
unlisted objects may be reused (a retried round, a resume redoing one) and are
overwritten whole; :func:`prune_checkpoints` removes them as it does on a local disk.
"""
from __future__ import annotations

import json
import pathlib
import re
from dataclasses import asdict, dataclass, field
from typing import Optional

from rayagg.core.tree import Tree
from rayagg.errors import CheckpointError
from rayagg.rundir.events import EVENTS_FILE, count_events
from rayagg.files import sha256_bytes, write_atomic
from rayagg.rundir.live import LIVE_FILE
from rayagg.rundir.metrics import METRICS_FILE
from rayagg.storage import as_path, remove_tree

# 3 added ``left``: a format-2 manifest reads as one where no device left. 4 added
# ``events`` and ``sizes``: an older one reads as one that does not know them (None, {}).
FORMAT = 4
_READABLE_FORMATS = (2, 3, 4)
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"  # the resolved config a run was made with
TRACKING_FILE = "tracking.json"  # the MLflow run a resume continues (rayagg/tracking/)
TENSORBOARD_DIR = "tensorboard"  # TensorBoard's event files, unless tracking.tensorboard.log_dir
# What rayagg writes into a run directory: any of these marks the directory as a run.
RUN_FILES = (STATE_FILE, CONFIG_FILE, METRICS_FILE, EVENTS_FILE, "checkpoints", "bridge",
             LIVE_FILE, TRACKING_FILE, TENSORBOARD_DIR)
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
    the SHA-256 of every file a resume reads, the bridge-sample stores among them;
    ``sizes`` their sizes in bytes and ``events`` the events events.parquet held when the
    cut was committed (a resume and ``rayagg status`` need at least those). :meth:`save`
    fills both in from the run directory when they are not given; a manifest written
    before they were recorded reads with ``events`` None and ``sizes`` empty.
    """

    round: int
    parent_of: dict
    dead: list
    checkpoints: dict = field(default_factory=dict)
    digests: dict = field(default_factory=dict)
    left: list = field(default_factory=list)
    events: Optional[int] = None
    sizes: dict = field(default_factory=dict)

    def save(self, run_dir: pathlib.Path) -> None:
        """Replaces RUN_DIR/state.json atomically and durably: this is the commit of a cut.
        The events file and the listed files are on disk by then (metrics and events are
        written before a cut, the nodes' files before it names them): unless given, the
        manifest records how many events the one holds and the others' sizes."""
        run_dir = as_path(run_dir)
        body = asdict(self)
        if body["events"] is None:
            events = run_dir / EVENTS_FILE
            body["events"] = count_events(events) if events.is_file() else 0
        if not body["sizes"]:
            body["sizes"] = {relative: (run_dir / relative).stat().st_size for relative in self.digests
                             if (run_dir / relative).is_file()}
        record = {"format": FORMAT, **body, "sha256": sha256_bytes(_canonical(body))}
        write_atomic(run_dir / STATE_FILE, json.dumps(record, indent=1).encode())

    @classmethod
    def load(cls, run_dir: pathlib.Path) -> "RunState":
        """Reads and verifies RUN_DIR/state.json; CheckpointError naming the file and the cause."""
        run_dir = as_path(run_dir)
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
        return as_path(run_dir) / relative, self.digests[relative]

    def digest_of(self, path: pathlib.Path, run_dir: pathlib.Path) -> Optional[str]:
        """The SHA-256 this cut records for the file at ``path``, or None if it lists none."""
        return self.digests.get(manifest_key(path, run_dir))

    def bridge_stores(self, run_dir: pathlib.Path) -> dict[pathlib.Path, str]:
        """The bridge-sample stores this cut lists (path -> SHA-256): the one written at
        start and one per round in which devices joined."""
        return {as_path(run_dir) / relative: digest for relative, digest in sorted(self.digests.items())
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
              and all(p in self.digests for p in self.checkpoints.values())
              and (self.events is None or (type(self.events) is int and self.events >= 0))
              and isinstance(self.sizes, dict) and set(self.sizes) <= set(self.digests)
              and all(type(n) is int and n >= 0 for n in self.sizes.values()))
        if not ok:
            raise CheckpointError(f"{path} is corrupt: fields have unexpected types or values")


def manifest_key(path: pathlib.Path, run_dir: pathlib.Path) -> str:
    """How the manifest names a file of the run: its path relative to the run directory."""
    return str(as_path(path).resolve().relative_to(as_path(run_dir).resolve()))


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def missing_manifest(run_dir: pathlib.Path) -> str:
    """Why ``run_dir`` has no manifest, as the message of a CheckpointError or a status line."""
    run_dir = as_path(run_dir)
    stray = sorted((run_dir / "checkpoints").rglob("*.pt")) if (run_dir / "checkpoints").is_dir() else []
    if stray:
        return (f"{run_dir / STATE_FILE} is missing although {run_dir / 'checkpoints'} holds "
                f"{len(stray)} checkpoint file(s): without the manifest rayagg cannot tell which "
                "of them form a complete checkpoint, and it will not guess")
    if holds_run(run_dir):
        return (f"{run_dir} has no checkpoint: the run stopped or failed while starting, before "
                f"its first checkpoint; nothing to resume (start it again with --overwrite)")
    return f"{run_dir} is not a rayagg run directory (no {STATE_FILE}, no config.yaml)"


def holds_run(path: pathlib.Path) -> bool:
    """True if ``path`` has any file rayagg writes into a run directory."""
    return any((as_path(path) / name).exists() for name in RUN_FILES)



def prune_checkpoints(run_dir: pathlib.Path, state: RunState) -> None:
    """Deletes round directories older than ``state``'s round that it does not reference
    (older cuts, and cuts abandoned half-written); a dead node's last checkpoint stays
    while it is listed. Newer directories stay: a later round in flight may be writing
    there (``runtime.rounds_in_flight``); the next committed cut past them prunes them."""
    kept = {pathlib.PurePath(p).parent.name for p in state.checkpoints.values()}
    root = as_path(run_dir) / "checkpoints"
    for directory in root.glob("round-*") if root.is_dir() else []:
        number = directory.name.removeprefix("round-")
        newer = number.isdigit() and int(number) > state.round
        if directory.is_dir() and directory.name not in kept and not newer:
            remove_tree(directory, ignore_errors=True)


def round_directory(run_dir: pathlib.Path, round_index: int) -> pathlib.Path:
    """Where round ``round_index``'s node checkpoints go."""
    return as_path(run_dir) / "checkpoints" / f"round-{round_index:04d}"


def checkpoint_file(directory: pathlib.Path, node: str) -> pathlib.Path:
    """``node``'s checkpoint in a round directory (:func:`round_directory`)."""
    return as_path(directory) / f"{node}.pt"
