"""Durable run files: atomic writes, digests, and checkpoints that refuse altered bytes."""
import os
import re

import pytest
import torch

from rayagg.rundir import checkpoint
from rayagg.errors import CheckpointError
from rayagg.files import file_sha256, write_atomic


def test_a_checkpoint_round_trips_and_its_digest_is_the_files(tmp_path):
    path = tmp_path / "round-0001" / "node.pt"
    digest = checkpoint.save({"w": torch.arange(4.0)}, path)
    assert digest == file_sha256(path) and not list(tmp_path.rglob("*.tmp"))
    assert torch.equal(checkpoint.load(path, digest)["w"], torch.arange(4.0))


@pytest.mark.parametrize("damage", ["flip", "truncate", "replace"])
def test_a_checkpoint_whose_bytes_changed_is_refused(tmp_path, damage):
    path = tmp_path / "node.pt"
    digest = checkpoint.save({"w": torch.arange(1000.0)}, path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01  # inside the tensor's bytes: torch itself would load it
    elif damage == "truncate":
        data = data[:-10]
    else:
        checkpoint.save({"w": torch.zeros(1000)}, path)
        data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt"):
        checkpoint.load(path, digest)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "gone.pt", "0" * 64)
    with pytest.raises(CheckpointError, match="is missing"):
        file_sha256(tmp_path / "gone.pt")


def test_write_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_atomic_files_are_ordinary_files_under_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600


def test_write_atomic_failure_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_atomic(path, b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_concurrent_writers_of_one_path_never_share_a_temp_file(tmp_path, monkeypatch):
    """A second writer runs to completion while the first is between its write and its
    rename (as another process sharing a cache or run directory could): with one fixed
    temp name the second would truncate and rename away the first's temp file."""
    path = tmp_path / "weights.pt"
    real_fsync = os.fsync
    nested = []

    def fsync_then_interleave(fd):
        real_fsync(fd)
        if not nested:
            nested.append(1)
            write_atomic(path, b"second")

    monkeypatch.setattr(os, "fsync", fsync_then_interleave)
    write_atomic(path, b"first")
    monkeypatch.undo()
    assert nested and path.read_bytes() == b"first"  # both whole; the last rename wins
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


def test_every_flipped_byte_of_a_metrics_file_is_refused_or_harmless(tmp_path):
    """No single-byte corruption of metrics.parquet reads back as other numbers: the reader
    either raises CheckpointError naming the file or returns exactly what was written
    (a flip in bytes the reader never uses, e.g. the writer's name)."""
    from rayagg.rundir.metrics import NodeMetrics, read_metrics, write_metrics

    path = tmp_path / "metrics.parquet"
    written = [NodeMetrics(r, f"node-{n}", "edge", 0.1 * n + r, 2.0 - r, 1.5, 9.0)
               for r in (1, 2) for n in range(3)]
    write_metrics(written, path)
    original = path.read_bytes()
    refused = 0
    for offset in range(len(original)):
        data = bytearray(original)
        data[offset] ^= 0x10
        path.write_bytes(bytes(data))
        try:
            assert read_metrics(path) == written, offset
        except CheckpointError as exc:
            assert str(path) in str(exc)
            refused += 1
    assert refused > len(original) // 2


def test_pruning_keeps_the_cut_a_dead_nodes_last_file_and_rounds_still_in_flight(tmp_path):
    """After the cut of round 3 is committed: round 1 (older, unreferenced) goes; round 2
    stays while a dead node's last checkpoint is there; round 4, which a round in flight
    may be writing (runtime.rounds_in_flight), stays too."""
    from rayagg.rundir.manifest import RunState, prune_checkpoints, round_directory

    for number in (1, 2, 3, 4):
        write_atomic(round_directory(tmp_path, number) / "cloud-0.pt", b"x")
    state = RunState(3, {"cloud-0": None, "edge-0": "cloud-0"}, ["edge-0"],
                     {"cloud-0": "checkpoints/round-0003/cloud-0.pt",
                      "edge-0": "checkpoints/round-0002/edge-0.pt"}, {}, [])
    prune_checkpoints(tmp_path, state)
    kept = sorted(d.name for d in (tmp_path / "checkpoints").iterdir())
    assert kept == ["round-0002", "round-0003", "round-0004"]


@pytest.mark.parametrize("damage", ["empty", "5 bytes", "11 bytes", "half", "all but 1 byte", "no head"])
def test_a_parquet_file_that_is_not_whole_is_refused_before_pyarrow_reads_it(tmp_path, monkeypatch, damage):
    """Some damaged files abort the process inside pyarrow instead of raising: the reader
    checks the magic at both ends and that the footer fits before pyarrow sees a byte."""
    from rayagg import files
    from rayagg.rundir.metrics import NodeMetrics, read_metrics, write_metrics

    path = tmp_path / "metrics.parquet"
    write_metrics([NodeMetrics(1, "cloud-0", "cloud", 0.5, 1.0, 1.5, 9.0)], path)
    data = path.read_bytes()
    damaged = {"empty": b"", "5 bytes": data[:5], "11 bytes": data[:11], "half": data[: len(data) // 2],
               "all but 1 byte": data[:-1], "no head": data[4:]}[damage]
    path.write_bytes(damaged)
    monkeypatch.setattr(files.pq, "read_table", lambda *a, **k: pytest.fail("pyarrow read a damaged file"))
    with pytest.raises(CheckpointError, match=re.escape(f"metrics file {path} is not readable Parquet "
                                                        "(truncated or corrupt): it")):
        read_metrics(path)
