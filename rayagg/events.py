"""Run events (deaths, moves, restarts, retries, resumes): RUN_DIR/events.parquet."""
from __future__ import annotations

import pathlib
import time
from dataclasses import asdict, dataclass

import pyarrow as pa

from rayagg.files import read_sealed_rows, write_sealed_rows

SCHEMA = pa.schema([("at", pa.float64()), ("monotonic_s", pa.float64()), ("round", pa.int32()),
                    ("kind", pa.string()), ("node", pa.string()), ("detail", pa.string())])


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
    def now(cls, round_index: int, kind: str, node: str, detail: str) -> "Event":
        return cls(time.time(), time.monotonic(), round_index, kind, node, detail)


def write_events(events: list[Event], path: pathlib.Path) -> None:
    write_sealed_rows([asdict(e) for e in events], SCHEMA, path)


def read_events(path: pathlib.Path) -> list[Event]:
    """Reads events.parquet; CheckpointError naming the file if it is corrupt or foreign."""
    return [Event(**row) for row in read_sealed_rows(path, "events file", SCHEMA)]
