"""``rayagg bench CONFIG --trace FILE``: the Ray run's traced calls as a Chrome/Perfetto trace.

Pure: no Ray, no torch. The file is the JSON "Trace Event Format" (open it in
ui.perfetto.dev or chrome://tracing): ``{"traceEvents": [...], "displayTimeUnit": "ms"}``.

Tracks: one process per host actor (named "host NAME", in the order the hosts were laid
out), one thread per node that host carries (named after the node); every traced call is a complete event
(``"ph": "X"``) on its node's thread, named after the call (``learn``, ``logits``,
``evaluate``, ...), ``ts``/``dur`` in microseconds from the first call's start, with
``args``: round, node, host, leaves (how many leaves' bridge samples), step (its index in
the round's submitted steps), seconds, torch_s, cpu_s and critical. Above the hosts, the
process "critical path" has one thread holding a copy of each critical-path call in path
order; on the hosts' tracks those calls have category ``call,critical`` and
``args.critical`` true, and flow arrows (``"ph": "s"``/``"f"``) chain them from one
track to the next. A gap between two consecutive critical-path slices is time the
chain spent waiting (scheduling, serialisation, copies), not computing.

Clocks: each host stamps a call's start with its machine's ``time.time()``. On one
machine every track shares that clock; on a multi-machine cluster each host's track is
placed by its own machine's clock, so tracks of different machines are shifted by their
clocks' offset (durations are unaffected). Where stamps of one track overlap by a
rounding error (or by clock offset, on the critical-path track), a slice is moved to
start where the one before it ended, so every track's slices nest as the format wants.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Optional, Sequence

from rayagg.core.schedule import CriticalPath, Step, Timing

CRITICAL_PID, CRITICAL_TID = 1, 1
CRITICAL_TRACK = "critical path"
CLOCK_NOTE = ("ts: microseconds since the first call's start; each call stamped with time.time() "
              "of its host's machine (tracks of different machines are aligned by each machine's clock)")


def trace_events(rounds: Sequence[Sequence[Step]], timings: Sequence[Sequence[Timing]],
                 host_of: Mapping[str, str], path: CriticalPath,
                 round_numbers: Optional[Sequence[int]] = None, *, name: str = "") -> dict[str, Any]:
    """The trace of ``rounds`` (each a list of steps as submitted) and their ``timings``
    (same shape, each with its start), on the tracks of ``host_of`` (node -> host; its
    order orders the tracks), with the calls of ``path`` marked. ``round_numbers``: the
    rounds' numbers (default 1, 2, ...). ValueError when shapes differ or a call has no
    start."""
    numbers = list(round_numbers) if round_numbers is not None else list(range(1, len(rounds) + 1))
    if len(timings) != len(rounds) or len(numbers) != len(rounds):
        raise ValueError(f"{len(rounds)} rounds but {len(timings)} timings and {len(numbers)} round numbers")
    calls = []  # (position, index, step, timing)
    for position, (steps, measured) in enumerate(zip(rounds, timings)):
        if len(steps) != len(measured):
            raise ValueError(f"round {numbers[position]}: {len(steps)} steps but {len(measured)} timings")
        for index, (step, timing) in enumerate(zip(steps, measured)):
            if timing.started <= 0:
                raise ValueError(f"round {numbers[position]}: {step.node}'s {step.call} has no start time")
            calls.append((position, index, step, timing))
    t0 = min((timing.started for *_, timing in calls), default=0.0)
    critical = {key: order for order, key in enumerate(path.steps)}

    # Tracks: hosts in host_of's order (then any other host a node names), nodes likewise.
    nodes = list(dict.fromkeys([*host_of, *(step.node for _, _, step, _ in calls)]))
    hosts = list(dict.fromkeys(host_of.get(node, node) for node in nodes))
    pid = {host: CRITICAL_PID + 1 + number for number, host in enumerate(hosts)}
    tid = {node: CRITICAL_TID + 1 + number for number, node in enumerate(nodes)}
    events: list[dict[str, Any]] = [
        _meta("process_name", CRITICAL_PID, CRITICAL_TID, name=CRITICAL_TRACK),
        _meta("process_sort_index", CRITICAL_PID, CRITICAL_TID, sort_index=0),
        _meta("thread_name", CRITICAL_PID, CRITICAL_TID, name=CRITICAL_TRACK),
    ]
    for host in hosts:
        events += [_meta("process_name", pid[host], 0, name=f"host {host}"),
                   _meta("process_sort_index", pid[host], 0, sort_index=pid[host])]
    for node in nodes:
        host = host_of.get(node, node)
        events += [_meta("thread_name", pid[host], tid[node], name=node),
                   _meta("thread_sort_index", pid[host], tid[node], sort_index=tid[node])]

    placed: dict[tuple[int, int], dict[str, Any]] = {}  # (position, index) -> its slice on its node
    ends: dict[tuple[int, int], float] = {}  # (pid, tid) -> where its last slice ends
    for position, index, step, timing in sorted(calls, key=lambda c: c[3].started):
        host = host_of.get(step.node, step.node)
        on_path = (position, index) in critical
        args = {"round": numbers[position], "node": step.node, "host": host, "leaves": len(step.leaves),
                "step": index, "seconds": timing.seconds, "torch_s": timing.torch_s, "cpu_s": timing.cpu_s,
                "critical": on_path}
        placed[position, index] = _slice(step.call, "call,critical" if on_path else "call", pid[host],
                                         tid[step.node], timing.started - t0, timing.seconds, args, ends)
    events += [placed[key] for key in sorted(placed, key=lambda key: placed[key]["ts"])]

    for order, key in enumerate(path.steps):
        original = placed[key]
        args = {**original["args"], "path_position": order}
        events.append(_slice(original["name"], "critical", CRITICAL_PID, CRITICAL_TID,
                             original["ts"] / 1e6, original["dur"] / 1e6, args, ends))
    for number, (before, after) in enumerate(zip(path.steps, path.steps[1:])):
        events += [_flow("s", number, placed[before]), _flow("f", number, placed[after])]
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"config": name, "clock": CLOCK_NOTE, "t0_unix_s": t0,
                          "critical_path_s": path.seconds, "rounds": numbers}}


def write_trace(path: pathlib.Path, rounds: Sequence[Sequence[Step]], timings: Sequence[Sequence[Timing]],
                host_of: Mapping[str, str], critical: CriticalPath,
                round_numbers: Optional[Sequence[int]] = None, *, name: str = "") -> dict[str, Any]:
    """Writes :func:`trace_events` to ``path`` as JSON; returns the trace."""
    trace = trace_events(rounds, timings, host_of, critical, round_numbers, name=name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace) + "\n")
    return trace


def _meta(kind: str, pid: int, tid: int, **args: Any) -> dict[str, Any]:
    return {"ph": "M", "name": kind, "pid": pid, "tid": tid, "args": args}


def _slice(name: str, category: str, pid: int, tid: int, start_s: float, seconds: float,
           args: dict[str, Any], ends: dict[tuple[int, int], float]) -> dict[str, Any]:
    """A complete event; moved to start no earlier than the track's last slice ended."""
    ts = max(round(start_s * 1e6, 3), ends.get((pid, tid), 0.0))
    dur = round(max(seconds, 0.0) * 1e6, 3)
    ends[pid, tid] = ts + dur
    return {"ph": "X", "name": name, "cat": category, "pid": pid, "tid": tid, "ts": ts, "dur": dur,
            "args": args}


def _flow(phase: str, number: int, target: dict[str, Any]) -> dict[str, Any]:
    """One end of a flow arrow, bound to the slice ``target`` (at its middle)."""
    event = {"ph": phase, "name": CRITICAL_TRACK, "cat": "critical", "id": number, "pid": target["pid"],
             "tid": target["tid"], "ts": round(target["ts"] + target["dur"] / 2, 3)}
    if phase == "f":
        event["bp"] = "e"
    return event
