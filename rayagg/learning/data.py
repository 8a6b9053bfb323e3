"""Data sets: Fashion-MNIST (from local IDX files), CIFAR-10 and CIFAR-100 (through
torchvision), loaded into uint8 tensors. How they are split over the leaves is
rayagg/learning/partition.py.

Nothing here is cached in a module global: each ``load_dataset`` call reads the
files again, so callers that need the data twice should keep the ``Dataset``.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rayagg.errors import DataError

DATASETS = ("fashion-mnist", "cifar10", "cifar100")

# System-wide folders searched for the Fashion-MNIST IDX files when no root is given
# (after $RAYAGG_DATA_DIR, before the user cache). A tuple so tests can monkeypatch it.
FASHION_MNIST_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)

DATA_DIR_ENV = "RAYAGG_DATA_DIR"

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# The folder torchvision's CIFAR classes expect under their root.
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

# (C, H, W) of one image and the number of classes, known without loading anything.
_SPECS = {"fashion-mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10),
          "cifar100": ((3, 32, 32), 100)}

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# Standard CIFAR-100 fine -> coarse (superclass) label mapping, fine labels in
# alphabetical order (apple, aquarium_fish, baby, bear, beaver, ...).
CIFAR100_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
], dtype=np.int64)


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field-wise is ambiguous
class Dataset:
    """A train/test pair of uint8 image tensors (N x C x H x W) and int64 labels."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Return the shape of one image, (C, H, W)."""
        c, h, w = self.train_images.shape[1:]
        return (int(c), int(h), int(w))


def default_root() -> Path:
    """Return the per-user data folder, ``~/.cache/rayagg/data``."""
    return Path.home() / ".cache" / "rayagg" / "data"


def load_dataset(name: str, *, root: str | None = None, download: bool = False,
                 coarse_labels: bool = False) -> Dataset:
    """Load data set `name` (one of DATASETS).

    Returns a Dataset with uint8 N x C x H x W images and int64 labels.
    Raises DataError when the name is unknown or the files are missing/corrupt.
    `coarse_labels` selects the 20 CIFAR-100 superclasses (ignored otherwise).
    """
    if name == "fashion-mnist":
        return _load_fashion_mnist(root, download)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, root, download, coarse_labels)
    raise _unknown(name)


def dataset_spec(name: str, coarse_labels: bool = False) -> tuple[tuple[int, int, int], int]:
    """Return (image shape (C, H, W), number of classes) of data set `name`, without loading it.

    `coarse_labels` gives CIFAR-100's 20 superclasses (ignored otherwise, as in
    load_dataset). Raises DataError when the name is unknown.
    """
    if name not in _SPECS:
        raise _unknown(name)
    shape, num_classes = _SPECS[name]
    if name == "cifar100" and coarse_labels:
        num_classes = 20
    return shape, num_classes


def check_dataset_files(name: str, *, root: str | None = None, download: bool = False) -> None:
    """Check that data set `name` can be found, without reading its files.

    Returns None when its files are where load_dataset would look, or when `download`
    is set (load_dataset then fetches what is missing; checking needs the network).
    Fashion-MNIST's four IDX files must exist; for CIFAR, torchvision's folder under
    `root` (or the user's data folder) must. Raises DataError naming the paths tried.
    """
    if name not in _SPECS:
        raise _unknown(name)
    if download:
        return
    if name == "fashion-mnist":
        find_fashion_mnist(root)
        return
    folder = Path(root or default_root()) / _CIFAR_FOLDERS[name]
    if not folder.is_dir():
        raise DataError(f"{name} not found: no folder {folder} (torchvision's layout under "
                        f"{'data.root' if root else 'the user data folder'}). Point data.root "
                        f"at the folder holding {folder.name}, or set data.download: true.")


def _unknown(name: str) -> DataError:
    return DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


# --------------------------------------------------------------------- IDX files

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzip-compressed if its name ends in .gz).

    Returns the array with the shape and dtype given in the file's header.
    Raises DataError naming the file when it is unreadable, truncated or malformed.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """Decode the bytes of an IDX file; returns the array, raises DataError."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"IDX file {path} has a bad magic number {raw[:4].hex() or '(empty)'}")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"IDX file {path} has a truncated header ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"IDX file {path} is truncated or corrupt: header says shape {dims} "
            f"({expected} bytes) but the file has {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # native order, and a writable copy


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as an IDX file (gzip if the name ends in .gz); used by the tests."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    array = np.asarray(array)
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"cannot write dtype {array.dtype} to IDX file {path}")
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    body = array.astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + body)


# ----------------------------------------------------------------- Fashion-MNIST

def fashion_mnist_candidates(root: str | None = None) -> list[Path]:
    """Return the folders searched for the Fashion-MNIST IDX files, in order.

    A given `root` is the only place searched (root/fashion-mnist, root, and
    torchvision's root/FashionMNIST/raw): a root that lacks the files must not
    silently fall back to another copy. Without one: $RAYAGG_DATA_DIR (same three
    folders), FASHION_MNIST_DIRS, then the user cache.
    """
    if root:
        return _folders_under(root)
    dirs: list[Path] = []
    if os.environ.get(DATA_DIR_ENV):
        dirs += _folders_under(os.environ[DATA_DIR_ENV])
    dirs += [Path(d) for d in FASHION_MNIST_DIRS]
    cache = default_root()
    dirs += [cache / "fashion-mnist", cache / "FashionMNIST" / "raw"]
    return list(dict.fromkeys(dirs))  # drop duplicates, keep order


def _folders_under(base: str) -> list[Path]:
    """The folders under `base` that may hold the IDX files (the last: torchvision's layout)."""
    return list(dict.fromkeys([Path(base) / "fashion-mnist", Path(base),
                               Path(base) / "FashionMNIST" / "raw"]))


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    """Return the four IDX paths in `folder` (.gz or plain), or None if any is missing."""
    found = {}
    for key, stem in _FASHION_FILES.items():
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                found[key] = folder / name
                break
        else:
            return None
    return found


def find_fashion_mnist(root: str | None = None) -> dict[str, Path]:
    """Return the paths of the four Fashion-MNIST IDX files, found without reading them.

    Searches fashion_mnist_candidates(root). Raises DataError listing the folders
    tried and the files expected (naming `root` when one is given).
    """
    tried = fashion_mnist_candidates(root)
    for folder in tried:
        files = _find_idx_files(folder)
        if files is not None:
            return files
    listing = "\n  ".join(str(d) for d in tried)
    expected = ", ".join(_FASHION_FILES.values())
    where = f"under data.root {root}" if root else "in any default location"
    fix = ("put them under data.root, leave data.root unset to search the default "
           "locations" if root else
           f"`apt-get install dataset-fashion-mnist`, or set data.root to a folder holding "
           f"them (or ${DATA_DIR_ENV})")
    raise DataError(
        f"Fashion-MNIST IDX files not found {where}; expected {expected} (each may end in "
        f".gz) in one of:\n  {listing}\nFix: {fix}, or set data.download: true")


def _load_fashion_mnist(root: str | None, download: bool) -> Dataset:
    """Find and parse Fashion-MNIST (downloading it if allowed); raises DataError."""
    try:
        files = find_fashion_mnist(root)
    except DataError:
        if download:
            return _download_fashion_mnist(root)
        raise
    return _fashion_from_files(files)


def _fashion_from_files(files: dict[str, Path]) -> Dataset:
    """Parse the four IDX files; returns the Dataset, raises DataError on bad shapes."""
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"Fashion-MNIST {split} files disagree: images {images.shape} "
                f"({files[f'{split}_images']}), labels {labels.shape} ({files[f'{split}_labels']})")
    return _make_dataset(
        "fashion-mnist", arrays["train_images"][:, None], arrays["train_labels"],
        arrays["test_images"][:, None], arrays["test_labels"], 10)


def _download_fashion_mnist(root: str | None) -> Dataset:
    """Download Fashion-MNIST through torchvision; returns the Dataset, raises DataError."""
    import torchvision  # lazy: only needed when downloading

    target = str(root) if root else str(default_root())
    try:
        train = torchvision.datasets.FashionMNIST(root=target, train=True, download=True)
        test = torchvision.datasets.FashionMNIST(root=target, train=False, download=True)
    except (RuntimeError, OSError) as exc:  # URLError is an OSError
        raise DataError(f"downloading Fashion-MNIST into {target} failed: {exc}") from exc
    return _make_dataset(
        "fashion-mnist", train.data.numpy()[:, None], train.targets.numpy(),
        test.data.numpy()[:, None], test.targets.numpy(), 10)


# ------------------------------------------------------------------------- CIFAR

def _load_cifar(name: str, root: str | None, download: bool, coarse: bool) -> Dataset:
    """Load CIFAR-10/100 through torchvision; returns the Dataset, raises DataError."""
    target = str(root) if root else str(default_root())
    train_x, train_y = _cifar_split(name, target, True, download)
    test_x, test_y = _cifar_split(name, target, False, download)
    num_classes = 10 if name == "cifar10" else 100
    if name == "cifar100" and coarse:
        train_y, test_y, num_classes = CIFAR100_COARSE[train_y], CIFAR100_COARSE[test_y], 20
    return _make_dataset(name, train_x, train_y, test_x, test_y, num_classes)


def _cifar_split(name: str, root: str, train: bool,
                 download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return (images N x C x H x W uint8, labels int64) of one split; raises DataError."""
    import torchvision  # lazy: importing torchvision costs a second or two

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        ds = cls(root=root, train=train, download=download)
    except (RuntimeError, OSError) as exc:
        hint = "" if download else " Set data.download: true to fetch it."
        raise DataError(f"{name} not found or unreadable under {root}: {exc}.{hint}") from exc
    images = np.asarray(ds.data, dtype=np.uint8)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{name} under {root} has unexpected image shape {images.shape}")
    return images.transpose(0, 3, 1, 2), np.asarray(ds.targets, dtype=np.int64)


def _make_dataset(name: str, train_x: np.ndarray, train_y: np.ndarray,
                  test_x: np.ndarray, test_y: np.ndarray, num_classes: int) -> Dataset:
    """Wrap numpy arrays as contiguous uint8/int64 tensors; returns the Dataset."""
    def images(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

    return Dataset(name, images(train_x), labels(train_y), images(test_x), labels(test_y),
                   num_classes)


# ------------------------------------------------------------ tensors

def to_float(images: torch.Tensor) -> torch.Tensor:
    """Return uint8 `images` as float32 in [0, 1]; raises DataError for other dtypes."""
    if images.dtype != torch.uint8:
        raise DataError(f"to_float expects uint8 images, got {images.dtype}")
    return images.to(torch.float32).div_(255.0)
