"""Durable run files: atomic, synced writes and reads verified against a SHA-256.

Every file a resume depends on (node checkpoints, the bridge-sample store) is listed
with its SHA-256 in the run's manifest (``RUN_DIR/state.json``); readers pass the
digest they expect, and a file whose bytes differ is a CheckpointError naming it, so a
flipped byte or a truncated copy is never loaded silently. Parquet files are also
written with page checksums, which catch flipped bytes where no digest is at hand
(metrics, events). Every Parquet file is read through :func:`read_parquet`, which checks
that the bytes are shaped like a whole Parquet file before pyarrow sees them.

A path may also be an object-store URI (rayagg/storage.py): there :func:`write_atomic` is
one whole-object write (an object store has no rename, and a reader trusts only what the
manifest lists with its SHA-256), and every read goes through the store.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import secrets
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from rayagg.errors import CheckpointError, RunDirError
from rayagg.storage import StorePath, as_path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: pathlib.Path) -> str:
    """The SHA-256 of a file's bytes; CheckpointError naming the file if it cannot be read."""
    digest = hashlib.sha256()
    path = as_path(path)
    try:
        if isinstance(path, StorePath):
            for block in path.blocks():
                digest.update(block)
        else:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from exc
    return digest.hexdigest()


def write_atomic(path: pathlib.Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a synced temporary file and a rename, then syncs the
    directory: a crash or kill at any moment leaves the old file or the whole new one.

    The temporary file has a fresh unique name in ``path``'s folder (same file system, so
    the rename is atomic), so concurrent writers of one path, in threads or processes,
    never write into each other's temporary file: each renames a whole file and the last
    rename wins. It is created with mode 0o666 less the umask, like ``open()``'s files,
    and removed if anything fails before the rename.

    On an object store (``path`` a URI) it is one whole-object write instead: readers see
    the old object or the whole new one. RunDirError naming the object if the store
    cannot be written."""
    path = as_path(path)
    if isinstance(path, StorePath):
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise RunDirError(str(exc)) from exc
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_unique_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def _create_unique_temp(path: pathlib.Path) -> tuple[int, pathlib.Path]:
    """Creates (O_EXCL) a new empty file named ``.NAME.<random>.tmp`` next to ``path``;
    returns its descriptor and path. Not tempfile.mkstemp: that makes files 0o600, while
    these become ordinary run files that other users may be meant to read (umask decides)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary file name next to {path}")


def sync_directory(directory: pathlib.Path) -> None:
    """Makes a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verified_bytes(path: pathlib.Path, sha256: Optional[str], what: str = "file") -> bytes:
    """Reads ``path``; raises CheckpointError naming it if it is missing or, when ``sha256``
    is given, if its bytes do not have that digest (corrupt, truncated or replaced)."""
    path = as_path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"{what} {path} cannot be read: {exc}") from exc
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise CheckpointError(f"{what} {path} is corrupt: its SHA-256 differs from the one "
                              f"recorded when it was written (truncated, altered or replaced)")
    return data


def write_sealed_rows(rows: list[dict], schema: pa.Schema, path: pathlib.Path) -> None:
    """Writes small tables whose bytes no manifest digests (metrics, events: they grow past
    the last cut): Parquet with a seal,
    a SHA-256 of the rows in the file's metadata, which :func:`read_sealed_rows` checks."""
    table = pa.Table.from_pylist(rows, schema=schema)
    write_parquet_atomic(table.replace_schema_metadata({_SEAL_KEY: _rows_digest(table).encode()}), path)


def read_sealed_rows(path: pathlib.Path, what: str, schema: pa.Schema,
                     older: Sequence[pa.Schema] = ()) -> list[dict]:
    """Reads a file written by :func:`write_sealed_rows`; raises CheckpointError naming
    ``what`` and the file if it is missing, unreadable, of another schema, or its rows
    are not the ones written. A file of an ``older`` schema (whose columns begin
    ``schema``'s) reads with only its own columns: the caller fills in the rest."""
    table = read_parquet(path, what)
    metadata = dict(table.schema.metadata or {})
    seal = metadata.pop(_SEAL_KEY, b"").decode(errors="replace")
    table = table.replace_schema_metadata(metadata)
    if not any(table.schema.equals(known) for known in (schema, *older)):
        raise CheckpointError(f"{what} {path} has an unexpected schema: {table.schema}")
    if seal != _rows_digest(table):
        raise CheckpointError(f"{what} {path} is corrupt: its rows do not match the checksum "
                              "written with them")
    return table.to_pylist()


def write_parquet_atomic(table: pa.Table, path: pathlib.Path) -> None:
    """Writes ``table`` as Parquet with page checksums, atomically (see :func:`write_atomic`)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, write_page_checksum=True)
    write_atomic(path, sink.getvalue().to_pybytes())


def read_parquet(path: pathlib.Path, what: str, sha256: Optional[str] = None) -> pa.Table:
    """Reads a Parquet run file, verifying ``sha256`` (if given), that its bytes are a whole
    Parquet file and its page checksums; raises CheckpointError naming ``what`` and the file
    for anything missing or unreadable. Every Parquet file rayagg reads comes through here."""
    data = verified_bytes(path, sha256, what)
    check_parquet_whole(data, path, what)
    try:
        return pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for bad bytes
        raise CheckpointError(f"{what} {path} is not readable Parquet (truncated or corrupt): "
                              f"{exc}") from exc


def parquet_row_count(path: pathlib.Path, what: str) -> int:
    """The rows of a Parquet run file, from its footer alone (no pages are read);
    CheckpointError naming ``what`` and the file as :func:`read_parquet`."""
    data = verified_bytes(path, None, what)
    check_parquet_whole(data, path, what)
    try:
        return pq.read_metadata(pa.BufferReader(data)).num_rows
    except Exception as exc:
        raise CheckpointError(f"{what} {path} is not readable Parquet (truncated or corrupt): "
                              f"{exc}") from exc


_PARQUET_MAGIC = b"PAR1"


def check_parquet_whole(data: bytes, path: pathlib.Path, what: str) -> None:
    """CheckpointError naming the file unless ``data`` is shaped like a whole Parquet file:
    the magic 'PAR1' at both ends and a footer length that fits between them. pyarrow is
    never handed a file that fails this: some truncated files abort the process in it
    (exit 134, "terminate called without an active exception") instead of raising."""
    size = len(data)
    reason = None
    if size < 12:
        reason = f"it is {size} bytes, fewer than the 12 of the smallest Parquet file"
    elif data[:4] != _PARQUET_MAGIC:
        reason = "it does not begin with the Parquet magic 'PAR1'"
    elif data[-4:] != _PARQUET_MAGIC:
        reason = "it does not end with the Parquet magic 'PAR1'"
    else:
        footer = int.from_bytes(data[-8:-4], "little")
        if not 0 < footer <= size - 12:
            reason = f"its footer length ({footer} bytes) does not fit in its {size} bytes"
    if reason is not None:
        raise CheckpointError(f"{what} {path} is not readable Parquet (truncated or corrupt): {reason}")


_SEAL_KEY = b"rayagg.rows_sha256"


def _rows_digest(table: pa.Table) -> str:
    """A SHA-256 of a table's column names and rows (JSON: stable for floats and strings)."""
    rows = json.dumps([table.column_names, table.to_pylist()], sort_keys=True, default=str)
    return sha256_bytes(rows.encode())
