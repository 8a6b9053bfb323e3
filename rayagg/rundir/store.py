"""The durable bridge-sample store: one Parquet file of codes and labels per node.

Bridge samples are computed once, by the leaves; a restarted node or a restarted run
rebuilds its inputs from this copy instead of asking the devices again. The file is
self-describing (format version, code shape, per-device counts in the schema
metadata), so a reader can tell a complete file from a truncated or foreign one.
"""
from __future__ import annotations

import json
import math
import pathlib
from collections import Counter
from typing import Iterable, Mapping, Optional

import numpy as np
import pyarrow as pa

from rayagg.files import read_parquet, write_parquet_atomic
from rayagg.errors import CheckpointError
from rayagg.learning.node import BridgeSamples
from rayagg.storage import as_path

FORMAT_VERSION = 1

_VERSION_KEY = b"rayagg.format_version"
_SHAPE_KEY = b"rayagg.code_shape"
_COUNTS_KEY = b"rayagg.device_counts"
# Column -> expected type; the code column's list size is checked against the stored shape.
_COLUMNS = {"device": pa.string(), "sample": pa.int64(), "label": pa.int64(), "code": None}


def store_path(run_dir: pathlib.Path, node: str) -> pathlib.Path:
    """Where ``node`` keeps its bridge samples within a run directory."""
    return as_path(run_dir) / "bridge" / f"{node}.parquet"


def joined_store_path(run_dir: pathlib.Path, round_index: int) -> pathlib.Path:
    """Where the bridge samples of devices that joined before ``round_index`` are kept."""
    return as_path(run_dir) / "bridge" / f"joined-round-{round_index:04d}.parquet"


def write_bridge_samples(samples: Iterable[BridgeSamples], path: pathlib.Path) -> int:
    """Writes ``samples`` to ``path`` atomically; returns the number of rows written.

    Raises ValueError if there is nothing to store, if a device appears twice, if codes
    and labels disagree in length, or if the items do not share one code shape.
    """
    path = as_path(path)
    items = list(samples)
    if not items:
        raise ValueError(f"no bridge samples to store in {path}")
    shape: Optional[tuple[int, ...]] = None
    counts: dict[str, int] = {}
    for item in items:
        codes, labels = np.asarray(item.codes), np.asarray(item.labels)
        if codes.ndim < 2 or labels.ndim != 1 or len(codes) != len(labels):
            raise ValueError(f"{item.leaf}: codes {codes.shape} and labels {labels.shape} do not "
                             "describe the same N samples")
        if shape is None:
            shape = codes.shape[1:]
        elif codes.shape[1:] != shape:
            raise ValueError(f"{item.leaf}: code shape {codes.shape[1:]} differs from {shape}")
        if item.leaf in counts:
            raise ValueError(f"device {item.leaf} appears twice")
        counts[item.leaf] = len(labels)
    size = math.prod(shape)

    flat = np.concatenate([np.ascontiguousarray(i.codes, dtype=np.float32).reshape(-1) for i in items])
    table = pa.table({
        "device": pa.array(np.repeat(list(counts), list(counts.values())).tolist(), pa.string()),
        "sample": pa.array(np.concatenate([np.arange(n, dtype=np.int64) for n in counts.values()])),
        "label": pa.array(np.concatenate([np.asarray(i.labels, dtype=np.int64) for i in items])),
        "code": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), size),
    })
    table = table.replace_schema_metadata({
        _VERSION_KEY: str(FORMAT_VERSION).encode(),
        _SHAPE_KEY: json.dumps(list(shape)).encode(),
        _COUNTS_KEY: json.dumps(counts).encode(),  # dict order = device order for readers
    })
    # Readers see the old file or the whole new one (the manifest's SHA-256 covers it).
    write_parquet_atomic(table, path)
    return table.num_rows


def read_bridge_samples(path: pathlib.Path, *, expected_counts: Optional[Mapping[str, int]] = None,
                        sha256: Optional[str] = None) -> list[BridgeSamples]:
    """Reads a store written by :func:`write_bridge_samples`.

    Returns one BridgeSamples per device, in the order written, rows ordered by sample
    index, codes float32 of the stored shape, labels int64. Raises CheckpointError naming
    ``path`` if the file is missing, unreadable, of a different schema or format version,
    incomplete (row counts or sample indices disagree with its metadata), if
    ``expected_counts`` is given and the devices or their counts differ, or if ``sha256``
    is given and the file's digest differs.
    """
    path = as_path(path)

    def fail(problem: str) -> CheckpointError:
        return CheckpointError(f"bridge-sample store {path}: {problem}")

    if not path.is_file():
        raise fail("file not found")
    table = read_parquet(path, "bridge-sample store", sha256)
    shape, counts = _checked_layout(table.schema, fail)
    for name in _COLUMNS:
        if table.column(name).null_count:
            raise fail(f"column {name!r} has null values")
    result = _per_device(table, shape, counts, fail)
    if expected_counts is not None:
        _check_counts(counts, expected_counts, fail)
    return result


def _checked_layout(schema: pa.Schema, fail) -> tuple[tuple[int, ...], dict[str, int]]:
    """The code shape and per-device counts a store's schema declares, once its columns,
    types and format version are the expected ones."""
    if set(schema.names) != set(_COLUMNS) or len(schema.names) != len(_COLUMNS):
        missing = sorted(set(_COLUMNS) - set(schema.names))
        extra = sorted(set(schema.names) - set(_COLUMNS))
        raise fail(f"unexpected columns: missing {missing}, extra {extra}")
    for name, expected in _COLUMNS.items():
        actual = schema.field(name).type
        if expected is not None and actual != expected:
            raise fail(f"column {name!r} has type {actual}, expected {expected}")
    meta = schema.metadata or {}
    if any(key not in meta for key in (_VERSION_KEY, _SHAPE_KEY, _COUNTS_KEY)):
        raise fail("rayagg metadata (format version, code shape, device counts) is missing")
    if meta[_VERSION_KEY] != str(FORMAT_VERSION).encode():
        raise fail(f"unknown format version {meta[_VERSION_KEY].decode(errors='replace')!r}, "
                   f"expected {FORMAT_VERSION}")
    try:
        shape = tuple(int(d) for d in json.loads(meta[_SHAPE_KEY]))
        counts = {str(d): int(n) for d, n in json.loads(meta[_COUNTS_KEY]).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise fail(f"metadata is malformed: {exc}") from exc
    code_type = pa.list_(pa.float32(), math.prod(shape))
    if schema.field("code").type != code_type:
        raise fail(f"column 'code' has type {schema.field('code').type}, expected {code_type}")
    return shape, counts


def _per_device(table: pa.Table, shape: tuple[int, ...], counts: dict[str, int],
                fail) -> list[BridgeSamples]:
    """The table's rows as one BridgeSamples per device in ``counts`` order, rows ordered
    by sample index; refuses rows lost, added, duplicated or with gaps."""
    device_list = table.column("device").to_pylist()
    devices = np.asarray(device_list, dtype=object)
    sample = table.column("sample").to_numpy()
    labels = table.column("label").to_numpy()
    codes = table.column("code").combine_chunks().flatten().to_numpy().reshape((-1, *shape))
    actual = dict(Counter(device_list))
    if actual != {d: n for d, n in counts.items() if n}:  # a device may legitimately have 0 rows
        raise fail(f"row counts per device {actual} differ from the metadata {counts}: "
                   "rows were lost or added")
    result = []
    for device, n in counts.items():
        rows = np.flatnonzero(devices == device)
        rows = rows[np.argsort(sample[rows], kind="stable")]
        if not np.array_equal(sample[rows], np.arange(n)):
            raise fail(f"device {device}: sample indices are not 0..{n - 1} (duplicates or gaps)")
        result.append(BridgeSamples(device, codes[rows].astype(np.float32, copy=False),
                                    labels[rows].astype(np.int64, copy=False)))
    return result


def read_bridge_stores(paths: list[pathlib.Path], *, expected_counts: Mapping[str, int],
                       sha256: Optional[Mapping[pathlib.Path, str]] = None) -> list[BridgeSamples]:
    """Reads several stores (the one written at start and those of later joins) as one:
    each device must appear in exactly one of them and the union must be
    ``expected_counts``. CheckpointError naming the file(s) otherwise."""
    samples, where = [], {}
    for path in paths:
        for item in read_bridge_samples(path, sha256=(sha256 or {}).get(path)):
            if item.leaf in where:
                raise CheckpointError(f"bridge-sample stores {where[item.leaf]} and {path} both hold "
                                      f"device {item.leaf}")
            where[item.leaf] = path
            samples.append(item)
    names = ", ".join(str(path) for path in paths)
    _check_counts({item.leaf: len(item.labels) for item in samples}, expected_counts,
                  lambda problem: CheckpointError(f"bridge-sample stores {names}: {problem}"))
    return samples


def _check_counts(counts: Mapping[str, int], expected_counts: Mapping[str, int], fail) -> None:
    expected = dict(expected_counts)
    missing = sorted(set(expected) - set(counts))
    extra = sorted(set(counts) - set(expected))
    wrong = {d: f"{counts[d]} != {expected[d]}" for d in sorted(set(expected) & set(counts))
             if counts[d] != expected[d]}
    if missing or extra or wrong:
        raise fail(f"devices differ from the expected ones: missing {missing}, extra {extra}, "
                   f"wrong counts (stored != expected) {wrong}")
