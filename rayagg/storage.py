"""Where a run directory lives: a local path (``pathlib.Path``) or a URI on object storage
(``s3://bucket/prefix``, ``gs://bucket/prefix``), through one small path-like class.

Everything a run writes and reads in RUN_DIR goes through :func:`as_path`: a plain path
(or ``file://...``, which is one) stays a ``pathlib.Path`` and keeps every local
guarantee (atomic write, fsync, rename; rayagg/files.py). A URI becomes a
:class:`StorePath`, which implements the part of ``pathlib`` the run-directory code uses
(``/``, ``name``, ``parent``, ``exists``, ``is_file``, ``is_dir``, ``iterdir``, ``glob``,
``read_bytes``, ``write_bytes``, ``unlink``, ``stat().st_size``; ``mkdir`` and ``rmdir``
are no-ops: an object store has no directories) on a ``pyarrow.fs`` file system, so the
run-directory code reads the same for both. ``str()`` of one is its URI: that is what
travels to the host actors, each of which opens the store with its own environment.

Credentials and endpoints come only from the environment, as pyarrow reads them
(docs/running.md, "Run directories on object storage"); never from the config. Every
call to a store has a bounded time (:data:`CONNECT_TIMEOUT_S`, :data:`REQUEST_TIMEOUT_S`,
:data:`RETRY_ATTEMPTS`): a dead or unreachable store is an error within about a minute,
never a hang.

Errors: reading or writing an object raises ``OSError`` as ``pathlib`` does (a
``FileNotFoundError`` for a missing object) with the object's URI in the message, so the
callers' handling (CheckpointError naming the file) is the same for both; a query that
cannot reach the store (``exists``, ``is_dir``, a listing) raises RunDirError naming it.
"""
from __future__ import annotations

import fnmatch
import functools
import os
import pathlib
import posixpath
import re
import shutil
import urllib.parse
from typing import Iterator, Union

from rayagg.errors import RunDirError

STORE_SCHEMES = ("s3", "gs", "gcs")  # object stores; file:// is a local path
CONNECT_TIMEOUT_S = 5.0  # per connection attempt
REQUEST_TIMEOUT_S = 15.0  # per request without progress (a transfer that moves is not cut)
RETRY_ATTEMPTS = 3  # per call, with the AWS SDK's standard backoff
GCS_RETRY_LIMIT_S = 45.0  # gs://: pyarrow's GCS client retries for at most this long
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

RunPath = Union[pathlib.Path, "StorePath"]


def is_uri(path) -> bool:
    """True for a StorePath or a string naming one (``s3://``, ``gs://``...)."""
    if isinstance(path, StorePath):
        return True
    match = _SCHEME.match(str(path)) if isinstance(path, str) else None
    return match is not None and match.group(1).lower() in STORE_SCHEMES


def as_path(path) -> RunPath:
    """``path`` as the run-directory code handles it: a StorePath for an object-store URI,
    a ``pathlib.Path`` for anything else (``file:///x`` is the local path ``/x``).
    RunDirError for a URI of a scheme rayagg does not store runs on (``hdfs://``...)."""
    if isinstance(path, (StorePath, pathlib.Path)):
        return path
    text = os.fspath(path)
    match = _SCHEME.match(text)
    if match is None:
        return pathlib.Path(text)
    scheme = match.group(1).lower()
    parts = urllib.parse.urlsplit(text)
    if scheme == "file":
        return pathlib.Path(urllib.parse.unquote(parts.path))
    if scheme not in STORE_SCHEMES:
        raise RunDirError(f"{text}: rayagg keeps runs on a local path, file://, s3:// or gs://, "
                          f"not {scheme}://")
    if not parts.netloc:
        raise RunDirError(f"{text}: the URI names no bucket ({scheme}://BUCKET/PREFIX)")
    key = posixpath.normpath("/" + urllib.parse.unquote(parts.path)).strip("/")
    return StorePath(scheme, parts.netloc, key, parts.query)


def remove_tree(path: RunPath, ignore_errors: bool = False) -> None:
    """Removes a directory and everything in it (a prefix and every object under it)."""
    if not isinstance(path, StorePath):
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    try:
        path.filesystem.delete_dir_contents(path.location, missing_dir_ok=True)
        path.filesystem.delete_dir(path.location)
    except OSError:
        if not ignore_errors:
            raise


class _Stat:
    """What ``StorePath.stat()`` answers: the object's size."""

    def __init__(self, size: int):
        self.st_size = size


class StorePath:
    """One object or prefix on an object store, addressed like a path (module docstring).

    Immutable and hashable; equal when their URIs are. Pickles as its URI: whoever
    unpickles it opens the store with the credentials of their own environment."""

    __slots__ = ("scheme", "bucket", "key", "query")

    def __init__(self, scheme: str, bucket: str, key: str = "", query: str = ""):
        self.scheme, self.bucket, self.key, self.query = scheme, bucket, key, query

    # ---- names ----
    def __str__(self) -> str:
        path = f"{self.scheme}://{self.bucket}" + (f"/{self.key}" if self.key else "")
        return path + (f"?{self.query}" if self.query else "")

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, StorePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: "StorePath") -> bool:
        return str(self) < str(other)

    def __reduce__(self):
        return as_path, (str(self),)

    def __truediv__(self, child) -> "StorePath":
        key = posixpath.normpath(posixpath.join("/", self.key, str(child))).strip("/")
        return StorePath(self.scheme, self.bucket, key, self.query)

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def parent(self) -> "StorePath":
        return StorePath(self.scheme, self.bucket, posixpath.dirname(self.key), self.query)

    @property
    def parents(self) -> list["StorePath"]:
        """Every prefix above this one, the bucket last."""
        found, path = [], self
        while path.key:
            path = path.parent
            found.append(path)
        return found

    def with_name(self, name: str) -> "StorePath":
        return self.parent / name

    def relative_to(self, other: "StorePath") -> pathlib.PurePosixPath:
        """This key relative to ``other``'s; ValueError when it is not under it."""
        base = as_path(other)
        if not isinstance(base, StorePath) or (self.scheme, self.bucket) != (base.scheme, base.bucket):
            raise ValueError(f"{self} is not under {other}")
        return pathlib.PurePosixPath(self.key).relative_to(base.key or ".")

    def resolve(self) -> "StorePath":
        return self

    def expanduser(self) -> "StorePath":
        return self

    def is_symlink(self) -> bool:
        return False

    # ---- the store ----
    @property
    def filesystem(self):
        """The pyarrow file system of this bucket (one per process and bucket)."""
        return _filesystem(self.scheme, self.bucket, self.query)

    @property
    def location(self) -> str:
        """The path pyarrow knows this object by: ``bucket/key``."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def _info(self):
        try:
            return self.filesystem.get_file_info(self.location)
        except OSError as exc:
            raise RunDirError(f"cannot reach {self}: {exc}") from exc

    def exists(self) -> bool:
        """True for an object, or a prefix with objects under it."""
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def stat(self) -> _Stat:
        """The object's size; FileNotFoundError when there is none, OSError naming it if
        the store cannot be read."""
        import pyarrow.fs as pafs

        try:
            info = self.filesystem.get_file_info(self.location)
        except OSError as exc:
            raise OSError(f"{self}: {exc}") from exc
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"{self} is missing")
        return _Stat(info.size)

    def iterdir(self) -> Iterator["StorePath"]:
        """The objects and prefixes right under this prefix (none when there is none)."""
        yield from self._listing(recursive=False)

    def glob(self, pattern: str) -> Iterator["StorePath"]:
        """Children whose name matches ``pattern`` (one path component, fnmatch)."""
        return (child for child in self.iterdir() if fnmatch.fnmatchcase(child.name, pattern))

    def rglob(self, pattern: str) -> Iterator["StorePath"]:
        """Everything under this prefix whose name matches ``pattern``."""
        return (child for child in self._listing(recursive=True) if fnmatch.fnmatchcase(child.name, pattern))

    def _listing(self, recursive: bool) -> list["StorePath"]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.location, recursive=recursive, allow_not_found=True)
        try:
            infos = self.filesystem.get_file_info(selector)
        except OSError as exc:
            raise RunDirError(f"cannot list {self}: {exc}") from exc
        base = len(self.location) + 1
        return [self / info.path[base:] for info in infos if len(info.path) > base]

    def read_bytes(self) -> bytes:
        """The object's bytes; FileNotFoundError when it is missing, OSError naming it else."""
        try:
            with self.filesystem.open_input_stream(self.location) as stream:
                return stream.readall()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self} is missing") from None
        except OSError as exc:
            raise OSError(f"{self} cannot be read: {exc}") from exc

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def blocks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes in blocks (hashing a large object without holding it)."""
        try:
            with self.filesystem.open_input_stream(self.location) as stream:
                while block := stream.read(size):
                    yield block
        except FileNotFoundError:
            raise FileNotFoundError(f"{self} is missing") from None
        except OSError as exc:
            raise OSError(f"{self} cannot be read: {exc}") from exc

    def write_bytes(self, data: bytes) -> None:
        """Writes the whole object in one request (a single PUT up to pyarrow's part size:
        readers see the old object or the new one, never a part); OSError naming it."""
        try:
            with self.filesystem.open_output_stream(self.location) as stream:
                stream.write(data)
        except OSError as exc:
            raise OSError(f"cannot write {self}: {exc}") from exc

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        """Deletes the object; FileNotFoundError when it is missing (unless ``missing_ok``)."""
        try:
            self.filesystem.delete_file(self.location)
        except FileNotFoundError:
            if not missing_ok:
                raise FileNotFoundError(f"{self} is missing") from None
        except OSError as exc:
            raise OSError(f"cannot delete {self}: {exc}") from exc

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing: an object store has no directories (a prefix exists once it holds an object)."""

    def rmdir(self) -> None:
        """Nothing, as :meth:`mkdir`."""


@functools.lru_cache(maxsize=None)
def _filesystem(scheme: str, bucket: str, query: str):
    """The pyarrow file system for one bucket, with bounded timeouts and retries: opened
    by ``pyarrow.fs.FileSystem.from_uri`` (which reads the endpoint, region and
    credentials from the environment and the URI's query), then rebuilt with them."""
    import pyarrow.fs as pafs

    uri = f"{scheme}://{bucket}/" + (f"?{query}" if query else "")
    try:
        filesystem, _ = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError, TypeError) as exc:
        raise RunDirError(f"cannot open the store {uri}: {exc}") from exc
    return _bounded(filesystem, pafs)


def _bounded(filesystem, pafs):
    """``filesystem`` with rayagg's timeouts and retries; as it is where pyarrow's
    options cannot be read back (another pyarrow version)."""
    reduced = filesystem.__reduce__()
    options = dict(reduced[1][0]) if len(reduced) > 1 and reduced[1] and isinstance(reduced[1][0], dict) else None
    if options is None:
        return filesystem
    if isinstance(filesystem, pafs.S3FileSystem):
        options.update(connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S,
                       retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=RETRY_ATTEMPTS),
                       allow_delayed_open=True)  # small objects: one PutObject, not a multipart upload
        return pafs.S3FileSystem(**options)
    if isinstance(filesystem, pafs.GcsFileSystem):
        import datetime

        options["retry_time_limit"] = datetime.timedelta(seconds=GCS_RETRY_LIMIT_S)
        return pafs.GcsFileSystem(**options)
    return filesystem
