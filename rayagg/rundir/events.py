"""RUN_DIR/events.parquet: the run's events (rayagg/core/events.py), sealed."""
from __future__ import annotations

import pathlib
from dataclasses import asdict

import pyarrow as pa

from rayagg.core.events import Event
from rayagg.files import parquet_row_count, read_sealed_rows, write_sealed_rows

EVENTS_FILE = "events.parquet"
SCHEMA = pa.schema([("at", pa.float64()), ("monotonic_s", pa.float64()), ("round", pa.int32()),
                    ("kind", pa.string()), ("node", pa.string()), ("detail", pa.string())])


def write_events(events: list[Event], path: pathlib.Path) -> None:
    write_sealed_rows([asdict(e) for e in events], SCHEMA, path)


def read_events(path: pathlib.Path) -> list[Event]:
    """Reads events.parquet; CheckpointError naming the file if it is corrupt or foreign."""
    return [Event(**row) for row in read_sealed_rows(path, "events file", SCHEMA)]


def count_events(path: pathlib.Path) -> int:
    """How many events events.parquet holds, from its footer (the manifest records it)."""
    return parquet_row_count(path, "events file")
