"""Federated partitions of a data set's indices: the public slice (for the shared
autoencoder), subsets, and per-device shards, IID or Dirichlet non-IID. Numpy only,
seeded: the same seed gives the same shards on every machine."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from rayagg.errors import DataError

SCHEMES = ("dirichlet", "iid")


@dataclass(frozen=True)
class Split:
    """How a run divides a data set's training split: a seeded public slice of
    ``public_samples`` first (the autoencoder's, in no shard), then ``train_samples`` of
    the rest (None: all of it), partitioned over ``num_devices`` by ``scheme``.

    ``rayagg run`` draws it (:meth:`draw`, from ``rayagg.learning.plan.make_plan``) and
    ``rayagg check`` draws the same (``rayagg.learning.preflight.check_split``), so both
    refuse the same configs with the same message.
    """

    public_samples: int
    train_samples: Optional[int]
    num_devices: int
    scheme: str  # one of SCHEMES
    alpha: float  # Dirichlet concentration (unused by iid)
    min_per_device: int  # Dirichlet's floor per shard; iid asks for 1
    seed: int

    @property
    def device_minimum(self) -> int:
        """The fewest samples a shard may get: iid only refuses empty shards."""
        return 1 if self.scheme == "iid" else self.min_per_device

    def check_sizes(self, num_samples: int) -> None:
        """Raises the DataError :meth:`draw` raises for these sizes on a training split of
        ``num_samples``, from the numbers alone (nothing is drawn or allocated): a public
        slice that leaves no private sample, ``train_samples`` beyond the private rest, or
        fewer samples than ``num_devices`` x the device minimum. A Dirichlet split can still
        fail on the labels (:meth:`draw`)."""
        if self.scheme not in SCHEMES:
            raise DataError(f"unknown partition {self.scheme!r}; choose one of {', '.join(SCHEMES)}")
        _check_public(num_samples, self.public_samples)
        private = num_samples - self.public_samples
        if self.train_samples is not None:
            _check_take(self.train_samples, private)
            private = self.train_samples
        _check_partition_sizes(private, self.num_devices, self.device_minimum)

    def draw(self, labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Returns (public indices, one shard of indices per device) of the training split
        whose labels are ``labels``. Raises DataError as :meth:`check_sizes` does (checked
        first, so a hopeless size costs nothing), or when every Dirichlet draw leaves a
        device below ``min_per_device``."""
        self.check_sizes(len(labels))
        public, private = split_public(len(labels), self.public_samples, self.seed)
        private = take_subset(private, self.train_samples, self.seed)
        if self.scheme == "iid":
            return public, partition_iid(labels, private, self.num_devices, self.seed)
        return public, partition_dirichlet(labels, private, self.num_devices, self.alpha,
                                           self.min_per_device, self.seed)


def _check_public(num_samples: int, public_samples: int) -> None:
    if not 0 <= public_samples < num_samples:
        raise DataError(f"public_samples must be in [0, {num_samples}) (the train set size), "
                        f"got {public_samples}")


def _check_take(count: int, available: int) -> None:
    if not 0 <= count <= available:
        raise DataError(f"cannot take {count} samples from {available} available")


def _check_partition_sizes(num_samples: int, num_devices: int, min_per_device: int) -> None:
    """Raise DataError if `num_samples` cannot give each of num_devices >= min_per_device samples."""
    if num_devices < 1:
        raise DataError(f"num_devices must be >= 1, got {num_devices}")
    if min_per_device < 0:
        raise DataError(f"min_per_device must be >= 0, got {min_per_device}")
    if num_samples < num_devices * min_per_device:
        raise DataError(
            f"cannot give {num_devices} devices at least {min_per_device} samples each: "
            f"only {num_samples} samples ({num_devices * min_per_device} needed)")


def split_public(num_samples: int, public_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split range(num_samples) into a seeded public slice and the private rest.

    Returns (public_indices, private_indices): disjoint, sorted, covering all.
    Raises DataError unless 0 <= public_samples < num_samples.
    """
    _check_public(num_samples, public_samples)
    perm = np.random.default_rng(seed).permutation(num_samples)
    return np.sort(perm[:public_samples]), np.sort(perm[public_samples:])


def take_subset(indices: np.ndarray, count: int | None, seed: int) -> np.ndarray:
    """Return `count` of `indices` chosen without replacement (seeded), sorted.

    None returns all of them (sorted). Raises DataError if count < 0 or > len(indices).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if count is None:
        return np.sort(indices)
    _check_take(count, len(indices))
    chosen = np.random.default_rng(seed).choice(indices, size=count, replace=False)
    return np.sort(chosen)


def partition_iid(labels: np.ndarray, indices: np.ndarray, num_devices: int,
                  seed: int) -> list[np.ndarray]:
    """Split `indices` into num_devices near-equal random shards (sizes differ by <= 1).

    Returns one sorted int64 array per device. `labels` is unused (kept for a
    signature shared with partition_dirichlet). Raises DataError if a device would be empty.
    """
    del labels  # IID ignores labels by definition
    indices = np.asarray(indices, dtype=np.int64)
    _check_partition_sizes(len(indices), num_devices, 1)
    perm = np.random.default_rng(seed).permutation(indices)
    return [np.sort(shard) for shard in np.array_split(perm, num_devices)]


def partition_dirichlet(labels: np.ndarray, indices: np.ndarray, num_devices: int, alpha: float,
                        min_per_device: int, seed: int, max_tries: int = 100) -> list[np.ndarray]:
    """Per-class Dirichlet(alpha) non-IID split of `indices` (into `labels`).

    Returns one sorted int64 array per device; every index is in exactly one shard
    and each shard has >= min_per_device entries. Smaller alpha = more skew.
    Deterministic for a given seed. Raises DataError for bad arguments or when
    max_tries draws all leave some device below min_per_device.
    """
    if not alpha > 0:
        raise DataError(f"Dirichlet alpha must be > 0, got {alpha}")
    indices = np.asarray(indices, dtype=np.int64)
    _check_partition_sizes(len(indices), num_devices, min_per_device)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    smallest = 0
    for _ in range(max_tries):
        members, sizes = _dirichlet_draw(labels[indices], indices, num_devices, alpha, rng)
        smallest = int(sizes.sum(axis=0).min())
        if smallest >= min_per_device:
            return _shards(members, sizes)
    raise DataError(
        f"Dirichlet split (alpha={alpha}) of {len(indices)} samples over {num_devices} devices "
        f"left a device with {smallest} < min_per_device={min_per_device} samples after "
        f"{max_tries} tries; raise alpha or lower min_per_device")


def _dirichlet_draw(sub_labels: np.ndarray, indices: np.ndarray, num_devices: int,
                    alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One draw: cut each class's shuffled indices by Dir(alpha) proportions.

    Returns (the classes' shuffled indices, one class after the other; each class's piece
    sizes, classes x devices): device d gets the d-th piece of every class. Only sizes are
    computed, so a draw that leaves a device short costs no shards (the draws of a
    hopeless split over many devices took seconds each)."""
    members, sizes = [], []
    for cls in np.unique(sub_labels):
        shuffled = rng.permutation(indices[sub_labels == cls])
        props = rng.dirichlet(np.full(num_devices, alpha))
        cuts = (np.cumsum(props)[:-1] * len(shuffled)).astype(np.int64)
        # The bounds np.split(shuffled, cuts) cuts at: non-decreasing, clipped to the class.
        bounds = np.minimum(np.concatenate(([0], cuts, [len(shuffled)])), len(shuffled))
        members.append(shuffled)
        sizes.append(np.diff(bounds))
    if not members:
        return np.empty(0, np.int64), np.zeros((1, num_devices), np.int64)
    return np.concatenate(members), np.stack(sizes)


def _shards(members: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """Each device's pieces of every class, sorted: one int64 array per device."""
    owner = np.concatenate([np.repeat(np.arange(sizes.shape[1]), row) for row in sizes])
    grouped = members[np.argsort(owner, kind="stable")]
    shards = np.split(grouped, np.cumsum(sizes.sum(axis=0))[:-1])
    return [np.sort(shard).astype(np.int64, copy=False) for shard in shards]


def label_skew(labels: np.ndarray, shards: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between each shard's label distribution and the pooled one.

    Returns a float in [0, 1]: 0 for identical distributions (IID), near 1 for
    one-class shards. Empty shards are skipped. Raises DataError if all are empty.
    """
    labels = np.asarray(labels)
    shards = [np.asarray(s, dtype=np.int64) for s in shards if len(s)]
    if not shards:
        raise DataError("label_skew needs at least one non-empty shard")
    counts = np.stack([np.bincount(labels[s], minlength=num_classes) for s in shards])
    pooled = counts.sum(axis=0) / counts.sum()
    dists = counts / counts.sum(axis=1, keepdims=True)
    return float(np.mean(0.5 * np.abs(dists - pooled).sum(axis=1)))
