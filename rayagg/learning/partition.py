"""Federated partitions of a data set's indices: the public slice (for the shared
autoencoder), subsets, and per-device shards, IID or Dirichlet non-IID. Numpy only,
seeded: the same seed gives the same shards on every machine."""
from __future__ import annotations

import numpy as np

from rayagg.errors import DataError


def split_public(num_samples: int, public_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split range(num_samples) into a seeded public slice and the private rest.

    Returns (public_indices, private_indices): disjoint, sorted, covering all.
    Raises DataError unless 0 <= public_samples < num_samples.
    """
    if not 0 <= public_samples < num_samples:
        raise DataError(f"public_samples must be in [0, {num_samples}) (the train set size), "
                        f"got {public_samples}")
    perm = np.random.default_rng(seed).permutation(num_samples)
    return np.sort(perm[:public_samples]), np.sort(perm[public_samples:])


def take_subset(indices: np.ndarray, count: int | None, seed: int) -> np.ndarray:
    """Return `count` of `indices` chosen without replacement (seeded), sorted.

    None returns all of them (sorted). Raises DataError if count < 0 or > len(indices).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if count is None:
        return np.sort(indices)
    if not 0 <= count <= len(indices):
        raise DataError(f"cannot take {count} samples from {len(indices)} available")
    chosen = np.random.default_rng(seed).choice(indices, size=count, replace=False)
    return np.sort(chosen)


def _check_partition_args(indices: np.ndarray, num_devices: int, min_per_device: int) -> None:
    """Raise DataError if `indices` cannot give each of num_devices >= min_per_device samples."""
    if num_devices < 1:
        raise DataError(f"num_devices must be >= 1, got {num_devices}")
    if min_per_device < 0:
        raise DataError(f"min_per_device must be >= 0, got {min_per_device}")
    if len(indices) < num_devices * min_per_device:
        raise DataError(
            f"cannot give {num_devices} devices at least {min_per_device} samples each: "
            f"only {len(indices)} samples ({num_devices * min_per_device} needed)")


def partition_iid(labels: np.ndarray, indices: np.ndarray, num_devices: int,
                  seed: int) -> list[np.ndarray]:
    """Split `indices` into num_devices near-equal random shards (sizes differ by <= 1).

    Returns one sorted int64 array per device. `labels` is unused (kept for a
    signature shared with partition_dirichlet). Raises DataError if a device would be empty.
    """
    del labels  # IID ignores labels by definition
    indices = np.asarray(indices, dtype=np.int64)
    _check_partition_args(indices, num_devices, 1)
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
    _check_partition_args(indices, num_devices, min_per_device)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    smallest = 0
    for _ in range(max_tries):
        shards = _dirichlet_draw(labels[indices], indices, num_devices, alpha, rng)
        smallest = min(len(s) for s in shards)
        if smallest >= min_per_device:
            return [np.sort(s) for s in shards]
    raise DataError(
        f"Dirichlet split (alpha={alpha}) of {len(indices)} samples over {num_devices} devices "
        f"left a device with {smallest} < min_per_device={min_per_device} samples after "
        f"{max_tries} tries; raise alpha or lower min_per_device")


def _dirichlet_draw(sub_labels: np.ndarray, indices: np.ndarray, num_devices: int,
                    alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """One draw: cut each class's shuffled indices by Dir(alpha) proportions; returns shards."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
    for cls in np.unique(sub_labels):
        members = rng.permutation(indices[sub_labels == cls])
        props = rng.dirichlet(np.full(num_devices, alpha))
        cuts = (np.cumsum(props)[:-1] * len(members)).astype(np.int64)
        for device, piece in enumerate(np.split(members, cuts)):
            parts[device].append(piece)
    return [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]


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
