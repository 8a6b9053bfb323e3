"""What happened to a run's tree: deaths, moves, restarts, joins, retries, resumes. Pure.

Supervision's actions (rayagg/core/actions.py) are events of the first eight kinds as
the runtime applied them; the runtime adds the rest. Observers see each event as it
happens (rayagg/observe.py); RUN_DIR/events.parquet keeps them (rayagg/rundir/events.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum


class EventKind(str, Enum):
    """What an event records."""

    DECLARE_DEAD = "declare_dead"  # supervision: a node is dead
    REPARENT = "reparent"  # supervision: an orphan moved to a live node of its parent's tier
    DROP_LEAF = "drop_leaf"  # supervision: a dead device leaves the rounds
    RESTART = "restart"  # supervision: a node comes back from its checkpoint
    REJOIN = "rejoin"  # supervision: a dead device comes back under a live parent
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
    flight (0 = before the first), ``node`` the node it is about ("" for the run)."""

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
