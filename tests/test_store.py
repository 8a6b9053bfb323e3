"""The bridge-sample store: round trip, file layout, atomic write, and every corruption
a reader must refuse (with CheckpointError naming the problem)."""
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayagg.errors import CheckpointError
from rayagg.learning.node import BridgeSamples
from rayagg.rundir.store import FORMAT_VERSION, read_bridge_samples, store_path, write_bridge_samples

SHAPE = (4, 2, 3)


def make(leaf, n, seed, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return BridgeSamples(leaf, rng.standard_normal((n, *shape)).astype(np.float32),
                         rng.integers(0, 10, n).astype(np.int64))


@pytest.fixture
def samples():
    # Names not in sorted order, so the test sees whether the written order is kept.
    return [make("leaf-2", 5, 0), make("leaf-0", 1, 1), make("leaf-1", 3, 2)]


@pytest.fixture
def stored(tmp_path, samples):
    path = store_path(tmp_path, "edge-0")
    write_bridge_samples(samples, path)
    return path


def test_store_path(tmp_path):
    assert store_path(tmp_path, "edge-3") == tmp_path / "bridge" / "edge-3.parquet"


def test_round_trip(tmp_path, samples):
    path = tmp_path / "store.parquet"
    assert write_bridge_samples(samples, path) == 9
    back = read_bridge_samples(path, expected_counts={"leaf-0": 1, "leaf-1": 3, "leaf-2": 5})
    assert [b.leaf for b in back] == ["leaf-2", "leaf-0", "leaf-1"]
    for original, restored in zip(samples, back):
        assert restored.codes.dtype == np.float32 and restored.labels.dtype == np.int64
        assert restored.codes.shape == original.codes.shape
        np.testing.assert_array_equal(restored.codes, original.codes)
        np.testing.assert_array_equal(restored.labels, original.labels)


def test_rows_are_read_in_sample_order(stored):
    # Shuffle the rows on disk: the reader must order them by `sample`, not by position.
    table = pq.read_table(stored)
    pq.write_table(table.take(np.random.default_rng(0).permutation(table.num_rows)), stored)
    original = read_bridge_samples(stored)
    np.testing.assert_array_equal(original[0].labels, make("leaf-2", 5, 0).labels)
    np.testing.assert_array_equal(original[0].codes, make("leaf-2", 5, 0).codes)


def test_file_layout(stored):
    table = pq.read_table(stored)
    assert table.num_rows == 9
    assert table.schema.names == ["device", "sample", "label", "code"]
    assert table.schema.field("device").type == pa.string()
    assert table.schema.field("sample").type == pa.int64()
    assert table.schema.field("label").type == pa.int64()
    assert table.schema.field("code").type == pa.list_(pa.float32(), 4 * 2 * 3)
    assert table.column("sample").to_pylist()[:6] == [0, 1, 2, 3, 4, 0]
    meta = table.schema.metadata
    assert meta[b"rayagg.format_version"] == str(FORMAT_VERSION).encode()
    assert meta[b"rayagg.code_shape"] == b"[4, 2, 3]"


def test_atomic_write_leaves_no_tmp_file(stored):
    assert sorted(p.name for p in stored.parent.iterdir()) == ["edge-0.parquet"]


def test_mixed_code_shapes_rejected(tmp_path):
    with pytest.raises(ValueError, match="code shape"):
        write_bridge_samples([make("a", 2, 0), make("b", 2, 1, shape=(4, 3, 3))], tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_empty_input_rejected(tmp_path):
    with pytest.raises(ValueError, match="no bridge samples"):
        write_bridge_samples([], tmp_path / "x.parquet")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_bridge_samples(tmp_path / "absent.parquet")


def test_truncated_file(stored):
    data = stored.read_bytes()
    stored.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not readable Parquet"):
        read_bridge_samples(stored)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        read_bridge_samples(path)


def test_missing_column(stored):
    table = pq.read_table(stored)
    pq.write_table(table.drop_columns(["label"]), stored)
    with pytest.raises(CheckpointError, match="label"):
        read_bridge_samples(stored)


def test_wrong_column_type(stored):
    table = pq.read_table(stored)
    table = table.set_column(2, "label", table.column("label").cast(pa.int32()))
    pq.write_table(table, stored)
    with pytest.raises(CheckpointError, match="'label' has type int32"):
        read_bridge_samples(stored)


def test_unknown_format_version(stored):
    table = pq.read_table(stored)
    meta = {**table.schema.metadata, b"rayagg.format_version": b"99"}
    pq.write_table(table.replace_schema_metadata(meta), stored)
    with pytest.raises(CheckpointError, match="format version '99'"):
        read_bridge_samples(stored)


def test_missing_metadata(stored):
    pq.write_table(pq.read_table(stored).replace_schema_metadata(None), stored)
    with pytest.raises(CheckpointError, match="metadata"):
        read_bridge_samples(stored)


def test_removed_row(stored):
    table = pq.read_table(stored)  # keeps the schema metadata, which still claims 9 rows
    pq.write_table(table.take(list(range(1, table.num_rows))), stored)
    assert pq.read_table(stored).schema.metadata == table.schema.metadata
    with pytest.raises(CheckpointError, match="row counts"):
        read_bridge_samples(stored)


def test_duplicate_sample_index(stored):
    # Counts still match, but leaf-2's indices become 0,0,2,3,4.
    table = pq.read_table(stored)
    sample = table.column("sample").to_numpy().copy()
    sample[1] = 0
    pq.write_table(table.set_column(1, "sample", pa.array(sample)), stored)
    with pytest.raises(CheckpointError, match="leaf-2: sample indices"):
        read_bridge_samples(stored)


@pytest.mark.parametrize("expected, named", [
    ({"leaf-0": 1, "leaf-1": 3, "leaf-2": 5, "leaf-3": 2}, "missing \\['leaf-3'\\]"),
    ({"leaf-0": 1, "leaf-1": 3}, "extra \\['leaf-2'\\]"),
    ({"leaf-0": 1, "leaf-1": 4, "leaf-2": 5}, "'leaf-1': '3 != 4'"),
])
def test_expected_counts_mismatch(stored, expected, named):
    with pytest.raises(CheckpointError, match=named):
        read_bridge_samples(stored, expected_counts=expected)


def test_a_digest_that_differs_is_refused(stored):
    from rayagg.files import file_sha256

    assert len(read_bridge_samples(stored, sha256=file_sha256(stored))) == 3
    with pytest.raises(CheckpointError, match=re.escape(f"{stored} is corrupt")):
        read_bridge_samples(stored, sha256="0" * 64)


def test_a_flipped_byte_is_caught_even_without_a_digest(stored):
    # Page checksums: a flip inside the code column's data page, which still parses.
    data = bytearray(stored.read_bytes())
    data[200] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="bridge-sample store"):
        read_bridge_samples(stored)
