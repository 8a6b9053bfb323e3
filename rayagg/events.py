"""Run events (deaths, moves, restarts, retries, resumes): RUN_DIR/events.parquet."""
from __future__ import annotations

import pathlib
import time
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

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
    table = pa.Table.from_pylist([asdict(e) for e in events], schema=SCHEMA)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_events(path: pathlib.Path) -> list[Event]:
    return [Event(**row) for row in pq.read_table(path).to_pylist()]
