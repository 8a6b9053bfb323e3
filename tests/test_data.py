"""Tests of rayagg.learning.data: IDX parsing, data set loading, splits and partitions."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rayagg.learning import data, partition
from rayagg.errors import DataError

SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point every Fashion-MNIST search location into tmp_path; returns that folder."""
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", (str(tmp_path / "system"),))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def _write_tiny_fashion(folder: Path, compress: bool) -> None:
    """Write four tiny, consistent Fashion-MNIST-like IDX files into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if compress else ""
    for split, n in (("train", 12), ("t10k", 5)):
        data.write_idx(folder / f"{split}-images-idx3-ubyte{ext}",
                       rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        data.write_idx(folder / f"{split}-labels-idx1-ubyte{ext}",
                       rng.integers(0, 10, n, dtype=np.uint8))


# ------------------------------------------------------------------------ IDX

@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / name
    data.write_idx(path, array)
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzip-compressed
    back = data.read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_hand_written_header(tmp_path):
    # A header built by hand, independent of write_idx: magic 0x00000801, 3 items.
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([7, 0, 9]))
    np.testing.assert_array_equal(data.read_idx(path), [7, 0, 9])


def test_idx_truncated_raises_naming_file(tmp_path):
    full = tmp_path / "full-idx3-ubyte"
    data.write_idx(full, np.zeros((4, 5, 5), dtype=np.uint8))
    cut = tmp_path / "cut-idx3-ubyte.gz"
    cut.write_bytes(gzip.compress(full.read_bytes()[:-7]))
    with pytest.raises(DataError, match="cut-idx3-ubyte.gz"):
        data.read_idx(cut)


@pytest.mark.parametrize("payload", [b"", b"\x01\x02\x08\x01abcd", b"\x00\x00\x08\x03\x00"])
def test_idx_bad_header_raises(tmp_path, payload):
    path = tmp_path / "bad-idx-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DataError, match="bad-idx-ubyte"):
        data.read_idx(path)


def test_idx_corrupt_gzip_raises(tmp_path):
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(8))[:-10])
    with pytest.raises(DataError, match="broken-idx1-ubyte.gz"):
        data.read_idx(path)


# ------------------------------------------------------------------ loading

def test_missing_fashion_mnist_lists_paths(isolated):
    with pytest.raises(DataError) as info:
        data.load_dataset("fashion-mnist")
    message = str(info.value)
    for tried in (isolated / "env" / "fashion-mnist", isolated / "system",
                  isolated / "home" / ".cache" / "rayagg" / "data" / "fashion-mnist"):
        assert str(tried) in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download: true" in message


def test_a_root_without_fashion_mnist_is_an_error_naming_only_it(isolated):
    _write_tiny_fashion(isolated / "env", compress=True)  # a copy the root must not fall back to
    root = isolated / "root"
    root.mkdir()
    with pytest.raises(DataError) as info:
        data.load_dataset("fashion-mnist", root=str(root))
    message = str(info.value)
    assert f"under data.root {root};" in message and "train-images-idx3-ubyte" in message
    assert str(isolated / "env") not in message and str(isolated / "system") not in message


def test_an_empty_root_does_not_use_the_system_copy(tmp_path):
    try:
        data.find_fashion_mnist()
    except DataError:
        pytest.skip("no Fashion-MNIST copy outside data.root that a root could fall back to")
    with pytest.raises(DataError, match=re.escape(f"under data.root {tmp_path}")):
        data.load_dataset("fashion-mnist", root=str(tmp_path))
    with pytest.raises(DataError, match=re.escape(f"under data.root {tmp_path}")):
        data.check_dataset_files("fashion-mnist", root=str(tmp_path))


@pytest.mark.parametrize("folder", ["fashion-mnist", ".", "FashionMNIST/raw"])
def test_fashion_mnist_found_under_root(isolated, folder):
    root = isolated / "root"
    _write_tiny_fashion(root / folder, compress=True)
    data.check_dataset_files("fashion-mnist", root=str(root))
    assert data.load_dataset("fashion-mnist", root=str(root)).train_images.shape == (12, 1, 28, 28)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_found_via_env(isolated, compress):
    _write_tiny_fashion(isolated / "env" / "fashion-mnist", compress)
    ds = data.load_dataset("fashion-mnist")
    assert ds.train_images.shape == (12, 1, 28, 28) and ds.test_images.shape == (5, 1, 28, 28)
    assert ds.train_labels.dtype == torch.int64 and ds.train_images.dtype == torch.uint8
    assert ds.image_shape == (1, 28, 28) and ds.num_classes == 10


def test_fashion_mnist_root_wins_over_env(isolated):
    _write_tiny_fashion(isolated / "env", compress=True)
    root = isolated / "root"
    _write_tiny_fashion(root, compress=False)
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"junk")  # proves root is the one read
    with pytest.raises(DataError, match=str(root)):
        data.load_dataset("fashion-mnist", root=str(root))


@pytest.fixture(scope="module")
def fashion():
    if not (SYSTEM_FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed in /usr/share/datasets")
    return data.load_dataset("fashion-mnist", root=str(SYSTEM_FMNIST))


def test_real_fashion_mnist(fashion):
    assert fashion.name == "fashion-mnist" and fashion.num_classes == 10
    assert fashion.train_images.shape == (60000, 1, 28, 28)
    assert fashion.test_images.shape == (10000, 1, 28, 28)
    assert fashion.train_images.dtype == torch.uint8
    assert fashion.train_labels.shape == (60000,) and fashion.test_labels.shape == (10000,)
    assert fashion.train_labels.dtype == torch.int64
    # Fashion-MNIST is balanced: 6000 training images per class.
    assert torch.bincount(fashion.train_labels).tolist() == [6000] * 10
    assert fashion.train_images.max() > 200  # real pixels, not zeros
    assert data.dataset_spec("fashion-mnist") == (fashion.image_shape, fashion.num_classes)


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError) as info:
        data.load_dataset("mnist-but-wrong")
    assert all(name in str(info.value) for name in data.DATASETS)


def test_cifar_missing_raises_with_root(tmp_path):
    pytest.importorskip("torchvision")
    with pytest.raises(DataError) as info:
        data.load_dataset("cifar10", root=str(tmp_path), download=False)
    assert str(tmp_path) in str(info.value) and "download: true" in str(info.value)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_files_checked_without_loading(tmp_path, name):
    with pytest.raises(DataError, match=re.escape(f"no folder {tmp_path}")):
        data.check_dataset_files(name, root=str(tmp_path))
    data.check_dataset_files(name, root=str(tmp_path), download=True)  # the loader fetches it
    (tmp_path / {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]).mkdir()
    data.check_dataset_files(name, root=str(tmp_path))


@pytest.mark.parametrize("name,coarse,spec", [
    ("fashion-mnist", False, ((1, 28, 28), 10)), ("cifar10", False, ((3, 32, 32), 10)),
    ("cifar100", False, ((3, 32, 32), 100)), ("cifar100", True, ((3, 32, 32), 20))])
def test_dataset_spec(name, coarse, spec):
    assert data.dataset_spec(name, coarse_labels=coarse) == spec


def test_unknown_dataset_has_no_spec_and_no_files():
    with pytest.raises(DataError, match="choose one of"):
        data.dataset_spec("mnist")
    with pytest.raises(DataError, match="choose one of"):
        data.check_dataset_files("mnist", download=True)


def test_cifar100_coarse_mapping_shape():
    mapping = data.CIFAR100_COARSE
    assert mapping.shape == (100,)
    assert sorted(set(mapping.tolist())) == list(range(20))
    assert np.bincount(mapping).tolist() == [5] * 20
    # Spot checks: apple->fruit_and_vegetables(4), beaver->aquatic_mammals(0),
    # bicycle->vehicles_1(18), lawn_mower->vehicles_2(19), worm->invertebrates(13).
    assert [mapping[i] for i in (0, 4, 8, 41, 99)] == [4, 0, 18, 19, 13]


def test_cifar100_coarse_labels_through_loader(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")

    class FakeCifar100:
        def __init__(self, root, train, download):
            n = 100 if train else 10
            self.data = np.full((n, 32, 32, 3), 7, dtype=np.uint8)
            self.data[:, 0, 0, 2] = 9  # a marked channel to check the NHWC -> NCHW move
            self.targets = list(range(n))

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCifar100)
    fine = data.load_dataset("cifar100", root=str(tmp_path))
    coarse = data.load_dataset("cifar100", root=str(tmp_path), coarse_labels=True)
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert data.dataset_spec("cifar100") == (fine.image_shape, fine.num_classes)
    assert data.dataset_spec("cifar100", True) == (coarse.image_shape, coarse.num_classes)
    assert fine.image_shape == (3, 32, 32) and int(fine.train_images[0, 2, 0, 0]) == 9
    np.testing.assert_array_equal(coarse.train_labels.numpy(), data.CIFAR100_COARSE)


def test_to_float():
    images = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    out = data.to_float(images)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[0.0, 128 / 255, 1.0]]))
    with pytest.raises(DataError):
        data.to_float(out)


# ------------------------------------------------------------------- splits

def test_split_public_disjoint_and_complete():
    public, private = partition.split_public(1000, 150, seed=3)
    assert len(public) == 150 and len(private) == 850
    assert not set(public) & set(private)
    assert sorted(np.concatenate([public, private]).tolist()) == list(range(1000))
    assert np.all(np.diff(public) > 0) and np.all(np.diff(private) > 0)
    again, _ = partition.split_public(1000, 150, seed=3)
    other, _ = partition.split_public(1000, 150, seed=4)
    np.testing.assert_array_equal(public, again)
    assert not np.array_equal(public, other)
    with pytest.raises(DataError):
        partition.split_public(100, 100, seed=0)


def test_take_subset():
    pool = np.arange(10, 60)
    sub = partition.take_subset(pool, 20, seed=1)
    assert len(sub) == 20 and len(set(sub)) == 20 and set(sub) <= set(pool)
    assert np.all(np.diff(sub) > 0)
    np.testing.assert_array_equal(partition.take_subset(pool[::-1], None, seed=1), pool)
    with pytest.raises(DataError):
        partition.take_subset(pool, 51, seed=1)


def _synthetic_labels(n=6000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def _assert_partition(shards, indices, num_devices, min_size):
    assert len(shards) == num_devices
    joined = np.concatenate(shards)
    assert len(joined) == len(indices) and len(set(joined.tolist())) == len(joined)
    assert set(joined.tolist()) == set(indices.tolist())
    assert all(len(s) >= min_size for s in shards)
    assert all(np.all(np.diff(s) > 0) for s in shards)


def test_partition_iid():
    labels = _synthetic_labels()
    indices = np.arange(100, 6000, 2)
    shards = partition.partition_iid(labels, indices, 7, seed=0)
    _assert_partition(shards, indices, 7, len(indices) // 7)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert partition.label_skew(labels, shards, 10) < 0.08
    same = partition.partition_iid(labels, indices, 7, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(shards, same))
    with pytest.raises(DataError):
        partition.partition_iid(labels, indices[:3], 7, seed=0)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_partition_dirichlet_is_a_partition(alpha):
    labels = _synthetic_labels()
    indices = np.arange(0, 6000, 3)
    shards = partition.partition_dirichlet(labels, indices, 10, alpha, min_per_device=10, seed=5)
    _assert_partition(shards, indices, 10, 10)


def test_partition_dirichlet_seeded():
    labels = _synthetic_labels()
    indices = np.arange(6000)
    a = partition.partition_dirichlet(labels, indices, 8, 0.5, 5, seed=11)
    b = partition.partition_dirichlet(labels, indices, 8, 0.5, 5, seed=11)
    c = partition.partition_dirichlet(labels, indices, 8, 0.5, 5, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_label_skew_grows_as_alpha_falls():
    labels = _synthetic_labels()
    indices = np.arange(6000)
    skews = [partition.label_skew(labels, partition.partition_dirichlet(
        labels, indices, 10, alpha, 1, seed=2), 10) for alpha in (100.0, 1.0, 0.1)]
    assert skews[0] < 0.1 < skews[2]
    assert skews[0] < skews[1] < skews[2]


def test_label_skew_extremes():
    labels = np.repeat(np.arange(4), 10)
    one_class = [np.flatnonzero(labels == c) for c in range(4)]
    assert partition.label_skew(labels, one_class, 4) == pytest.approx(0.75)
    mixed = [np.arange(k * 4, k * 4 + 4) for k in range(10)]  # each holds labels 0,1,2,3
    assert partition.label_skew(np.tile(np.arange(4), 10), mixed, 4) == pytest.approx(0.0)


def test_partition_dirichlet_impossible_minimum():
    labels = _synthetic_labels(n=50)
    with pytest.raises(DataError, match=r"50 samples.*100 needed"):
        partition.partition_dirichlet(labels, np.arange(50), 10, 1.0, min_per_device=10, seed=0)
    # Feasible in count but not within max_tries at tiny alpha: still a DataError.
    with pytest.raises(DataError, match="min_per_device"):
        partition.partition_dirichlet(labels, np.arange(50), 10, 0.01, min_per_device=5, seed=0,
                                 max_tries=3)
