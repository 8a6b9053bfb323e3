"""RUN_DIR/live.json: where a live Ray run can be reached, and the live view of its tree
(pure: no Ray, no torch).

While a Ray run trains, its driver records its Ray cluster and namespace there (``rayagg
scale`` finds the run's supervisor through them) and rewrites the view every few seconds
and after each round (rayagg/runtime/live_view.py): for each node its host actor and
machine, its last heartbeat's age, its parent, the bridge samples it trains on, the round
it is in and its last accuracy; dead, left, moved and joined nodes marked. ``rayagg status
RUN_DIR`` renders it (``--watch`` again and again). A file, not a call to the run: it reads
the same on any machine that mounts RUN_DIR, needs no Ray, and a stale one shows its age.
The driver removes the file when the run ends.

The record names its driver by host name, pid and, where /proc tells them (Linux), the
process's start time and the machine's boot id: a record left by a driver that crashed
names a pid that may since belong to another process (pid 1, a recycled pid), which
its start time tells apart (rayagg/rundir/directory.py judges a record).
"""
from __future__ import annotations

import json
import pathlib
import socket
import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from rayagg.core.tree import Tree
from rayagg.errors import RunDirError
from rayagg.nodes import NodeStatus, status_of
from rayagg.files import write_atomic
from rayagg.storage import as_path

LIVE_FILE = "live.json"

def write_live(run_dir: pathlib.Path, address: str, namespace: str, pid: int, hostname: str,
               view: Optional[dict] = None) -> None:
    """Records where the run training in ``run_dir`` can be reached: its Ray cluster's GCS
    address and the run's namespace (its supervisor actor is ``supervisor`` there), its
    driver (``pid`` on ``hostname``, this machine: with the process's start time and the
    boot id when /proc tells them) and the tree as it is now (``view``: :func:`to_record`)
    for ``rayagg status``."""
    identity = {}
    if hostname == socket.gethostname():
        identity = {key: value for key, value in (("started", process_start(pid)), ("boot_id", boot_id()))
                    if value is not None}
    record = {"address": address, "namespace": namespace, "pid": pid, "hostname": hostname, **identity,
              **({"view": view} if view is not None else {})}
    # Compact: an indented dump runs json's pure-Python encoder, ten times slower on a
    # 10,000-node view than the C one; `rayagg status` is what people read it with.
    write_atomic(as_path(run_dir) / LIVE_FILE, json.dumps(record, separators=(",", ":")).encode())


def process_start(pid) -> Optional[int]:
    """When process ``pid`` of this machine started, in clock ticks since boot (field 22 of
    /proc/PID/stat); None without such a process or without /proc. A pid reused by
    another process has another start time."""
    if type(pid) is not int or pid <= 0:
        return None
    try:
        return int(process_stat(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def process_stat(pid: int) -> list[str]:
    """Fields 3 on of /proc/PID/stat (after "pid (comm) ", as the comm may hold spaces),
    so field N is at index N - 3. Raises OSError without such a process or /proc."""
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()


def boot_id() -> Optional[str]:
    """This boot of this machine (Linux); None where it cannot be read."""
    try:
        return pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def process_command(pid) -> Optional[list[str]]:
    """The command line of process ``pid`` of this machine; None where it cannot be read."""
    try:
        raw = pathlib.Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError, TypeError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def read_live(run_dir: pathlib.Path) -> Optional[dict]:
    """The live record of ``run_dir``, or None when no run trains there (or it crashed
    before it could remove the record: the caller finds nothing at the address)."""
    path = as_path(run_dir) / LIVE_FILE
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
    (as_path(run_dir) / LIVE_FILE).unlink(missing_ok=True)



# Past this many leaves, ``render`` sums the leaf tier up per parent unless asked for every row.
LEAVES_LISTED = 40


@dataclass(frozen=True)
class NodeView:
    """One node as the driver last saw it."""

    node: str
    tier: str
    host: str  # the host actor carrying it
    machine: str  # the host's machine (IP), "" before it started
    parent: str  # "" for the root
    status: str  # a NodeStatus value: "live", "dead" or "left" (a restarting node shows "live")
    joined: bool  # not in the tree the run started with (an elastic device that joined)
    moved_from: str  # the parent it started under, when it has another now; else ""
    heartbeat_age_s: Optional[float]  # None: no heartbeat heard (yet, or any more)
    bridge_samples: int
    done: int  # the last round its evaluation finished (0: none yet)
    accuracy: Optional[float]  # its test accuracy in round ``done``


def node_views(tree: Tree, initial: Tree, dead: frozenset[str], left: frozenset[str],
               host_of: Mapping[str, str], machine_of: Mapping[str, str], samples: Mapping[str, int],
               scores: Mapping[str, tuple[int, float]], ages: Mapping[str, float]) -> list[NodeView]:
    """Every node of ``tree`` as seen now, in tree order. ``initial`` is the tree the run
    started with (to tell moved and joined nodes); ``scores`` node -> (round, accuracy) of
    its last finished evaluation; ``ages`` node -> seconds since its last heartbeat."""
    views = []
    for node in tree.nodes:
        status = status_of(node, in_tree=tree.tier_of, dead=dead, left=left).value
        parent = tree.parent_of[node] or ""
        started_under = initial.parent_of.get(node) or ""  # "" for the root and joined nodes
        done, accuracy = scores.get(node, (0, None))
        host = host_of.get(node, "")
        views.append(NodeView(
            node, tree.tier_name(node), host, machine_of.get(host, ""), parent, status,
            joined=node not in initial.parent_of,
            moved_from=started_under if started_under not in ("", parent) else "",
            heartbeat_age_s=ages.get(node) if status == NodeStatus.LIVE else None,
            bridge_samples=samples.get(node, 0), done=done, accuracy=accuracy))
    return views


def to_record(views: Sequence[NodeView], *, rounds: int, done: int, in_flight: Sequence[int],
              updated: float) -> dict[str, Any]:
    """The JSON-ready view: the run's progress and every node."""
    return {"updated": updated, "rounds": rounds, "done": done, "in_flight": list(in_flight),
            # Every field is a plain value: asdict's recursive copy took a 10,000-node view a second.
            "nodes": [dict(vars(view)) for view in views]}


def from_record(record: Mapping[str, Any]) -> list[NodeView]:
    """The nodes of a view :func:`to_record` made; raises KeyError/TypeError when malformed."""
    return [NodeView(**row) for row in record["nodes"]]


def render(record: Mapping[str, Any], now: float, *, every_leaf: bool = False) -> list[str]:
    """The view as lines: a heading with the run's progress and the view's age, then one row
    per node (leaves summed up per parent past LEAVES_LISTED of them, unless ``every_leaf``)."""
    views = from_record(record)
    in_flight = record["in_flight"]
    flying = f"; in flight: round {', '.join(map(str, in_flight))}" if in_flight else ""
    lines = [f"round {record['done']} of {record['rounds']} done{flying} "
             f"(as of {max(0.0, now - record['updated']):.0f} s ago)",
             f"{'node':<12} {'tier':<8} {'host':<16} {'machine':<15} {'heartbeat':>9} {'parent':<10} "
             f"{'samples':>8} {'round':>6} {'accuracy':>8}  notes"]
    leaf_tier = views[-1].tier if views else ""
    leaves = [v for v in views if v.tier == leaf_tier]
    listed = views if every_leaf or len(leaves) <= LEAVES_LISTED else [v for v in views if v.tier != leaf_tier]
    lines += [_row(view, in_flight) for view in listed]
    if len(listed) < len(views):
        lines += _leaf_summary(leaves, in_flight)
    return lines


def _row(view: NodeView, in_flight: Sequence[int]) -> str:
    age = "-" if view.heartbeat_age_s is None else f"{view.heartbeat_age_s:.1f} s"
    accuracy = "-" if view.accuracy is None else f"{view.accuracy:.3f}"
    return (f"{view.node:<12} {view.tier:<8} {view.host:<16} {view.machine:<15} {age:>9} "
            f"{view.parent or '-':<10} {view.bridge_samples:>8} {_round(view, in_flight):>6} "
            f"{accuracy:>8}  {', '.join(_notes(view))}").rstrip()


def _round(view: NodeView, in_flight: Sequence[int]) -> str:
    """The round a live node works on: the first in flight it has not finished ("idle"
    when it finished them all); a dead node shows the last round it finished."""
    if view.status != NodeStatus.LIVE:
        return str(view.done)
    pending = [r for r in in_flight if r > view.done]
    return str(pending[0]) if pending else "idle"


def _notes(view: NodeView) -> list[str]:
    notes = [] if view.status == NodeStatus.LIVE else [view.status.upper()]
    if view.moved_from:
        notes.append(f"moved from {view.moved_from}")
    if view.joined:
        notes.append("joined")
    return notes


def _leaf_summary(leaves: Sequence[NodeView], in_flight: Sequence[int]) -> list[str]:
    """One line per parent: how many leaves, how many not live, the oldest heartbeat, the
    rounds they are in, the mean accuracy and the marks (``--all`` lists every leaf)."""
    lines = [f"{len(leaves)} {leaves[0].tier} nodes by parent (rayagg status --all lists each):"]
    for parent in sorted({v.parent for v in leaves}):
        group = [v for v in leaves if v.parent == parent]
        ages = [v.heartbeat_age_s for v in group if v.heartbeat_age_s is not None]
        scored = [v.accuracy for v in group if v.accuracy is not None]
        rounds = sorted({_round(v, in_flight) for v in group if v.status == NodeStatus.LIVE})
        marks = [f"{sum(1 for v in group if v.status == s)} {s.value}" for s in (NodeStatus.DEAD, NodeStatus.LEFT)
                 if any(v.status == s for v in group)]
        marks += [f"{count} {what}" for what, count in (
            ("moved in", sum(1 for v in group if v.moved_from)), ("joined", sum(1 for v in group if v.joined)))
            if count]
        age = f"heartbeat max {max(ages):.1f} s" if ages else "heartbeat -"
        accuracy = f"accuracy mean {statistics.fmean(scored):.3f}" if scored else "accuracy -"
        lines.append(f"  under {parent or '-':<10} {len(group):>5} nodes  {age}  "
                     f"round {'/'.join(rounds) or '-'}  {accuracy}")
        if marks:
            lines[-1] += f"  ({', '.join(marks)})"
    return lines
