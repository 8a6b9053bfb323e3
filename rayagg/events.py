"""Run events (deaths, moves, restarts, retries, resumes): RUN_DIR/events.parquet."""
from __future__ import annotations

import pathlib
import time
from dataclasses import asdict, dataclass
from enum import Enum

import pyarrow as pa

from rayagg.files import read_sealed_rows, write_sealed_rows

SCHEMA = pa.schema([("at", pa.float64()), ("monotonic_s", pa.float64()), ("round", pa.int32()),
                    ("kind", pa.string()), ("node", pa.string()), ("detail", pa.string())])


class EventKind(str, Enum):
    """What an event records. The first eight are the supervisor's actions
    (``supervision.ActionKind``) as the runner applied them."""

    DECLARE_DEAD = "declare_dead"
    REPARENT = "reparent"
    DROP_LEAF = "drop_leaf"
    RESTART = "restart"
    REJOIN = "rejoin"
    JOIN = "join"  # an elastic device joined (new, or returning with its model)
    LEAVE = "leave"  # an elastic device left at a round boundary
    REBALANCE = "rebalance"  # the balancing policy moved a device to another edge
    MEMBERSHIP = "membership"  # the elastic tier changes before a round: how many, and why
    JOIN_FAILED = "join_failed"  # a device died while joining; it stays away
    RESTART_FRESH = "restart_fresh"  # a restarted node had no checkpoint yet
    RETRY = "retry"  # a round lost a node and runs again on the repaired tree
    RESUME = "resume"  # a run continued from its last checkpoint


@dataclass(frozen=True)
class Event:
    """One thing that happened to the tree. ``at`` is wall-clock (epoch seconds),
    ``monotonic_s`` the driver's monotonic clock (for latencies), ``round`` the round in
    flight (0 = before the first)."""

    at: float
    monotonic_s: float
    round: int
    kind: str
    node: str
    detail: str

    @classmethod
    def now(cls, round_index: int, kind: EventKind, node: str, detail: str) -> "Event":
        """An event stamped now; ``kind`` is stored as its plain string value (it reads
        back equal to the EventKind member)."""
        return cls(time.time(), time.monotonic(), round_index, EventKind(kind).value, node, detail)


def write_events(events: list[Event], path: pathlib.Path) -> None:
    write_sealed_rows([asdict(e) for e in events], SCHEMA, path)


def read_events(path: pathlib.Path) -> list[Event]:
    """Reads events.parquet; CheckpointError naming the file if it is corrupt or foreign."""
    return [Event(**row) for row in read_sealed_rows(path, "events file", SCHEMA)]
