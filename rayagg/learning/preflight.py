"""Checks of a run's inputs that the config's own validation cannot make, before anything starts.

A config can be well-formed and still fail an hour later inside an actor: the data set
is not where the loader looks, its split cannot give every device its samples, or a
tier's model cannot be built or cannot train on the data set's images. The checks here
are cheap, so they run before Ray, data loading or the autoencoder's pretraining: the
data set's files are looked for, the split is drawn on its training labels exactly as
the run draws it (only the labels are read, for Fashion-MNIST; CIFAR is loaded through
torchvision as the run loads it), and each tier's model is built once and takes one
forward and backward pass on two dummy images of the data set's shape. Every failure
names what is at fault: the tier, the model string and the cause, or the sizes.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayagg.learning import data, models, plan
from rayagg.config import RunConfig, Tier
from rayagg.errors import ConfigError, DataError

# The smallest batch on which BatchNorm can use batch statistics, as training does.
PROBE_BATCH = 2

# (training, test) samples of each data set as `data.download: true` fetches it: the split
# of a set that is not on disk yet is checked from these sizes.
DOWNLOADED_SIZES = {"fashion-mnist": (60_000, 10_000), "cifar10": (50_000, 10_000),
                    "cifar100": (50_000, 10_000)}


def check_inputs(config: RunConfig) -> None:
    """Runs :func:`check_data`, :func:`check_split`, then :func:`check_models`; raises what
    they raise."""
    check_data(config)
    check_split(config)
    check_models(config)


def check_data(config: RunConfig) -> None:
    """Checks that the data set's files are where the loader will look, without reading them.

    Passes when ``data.download`` is true (the loader then fetches what is missing).
    Raises DataError naming the folders tried (and ``data.root`` when it is set).
    """
    cfg = config.data
    data.check_dataset_files(cfg.dataset, root=cfg.root, download=cfg.download)


def check_split(config: RunConfig) -> None:
    """Draws the split of the training data over the leaves as the run will
    (``rayagg.learning.plan.data_split``) and the test subset, on the data set's labels.

    Raises the DataError the run would raise, with its message: sizes that cannot be met
    (checked from the numbers first, so ten million devices cost nothing), or a Dirichlet
    split that leaves a device below ``data.min_samples_per_device`` on every draw. A data
    set that ``data.download`` will fetch is checked from its published sizes alone.
    """
    labels, num_test = _training_labels(config)
    split = plan.data_split(config)
    if labels is None:
        num_train, num_test = DOWNLOADED_SIZES[config.data.dataset]
        split.check_sizes(num_train)
    else:
        split.draw(labels)
    plan.test_subset(config, num_test)


def _training_labels(config: RunConfig) -> tuple[Optional[np.ndarray], int]:
    """(the training labels the run will split, the test split's size) as the run's loader
    will read them; (None, 0) when the data set is not on disk and ``data.download`` is set."""
    cfg = config.data
    try:
        data.check_dataset_files(cfg.dataset, root=cfg.root)  # what is on disk, downloading nothing
        if cfg.dataset == "fashion-mnist":
            files = data.find_fashion_mnist(cfg.root)
            train, test = (data.read_idx(files[key]) for key in ("train_labels", "test_labels"))
            if train.ndim == test.ndim == 1:
                return train.astype(np.int64), len(test)
            # Otherwise the loader below refuses the files, naming them.
        dataset = data.load_dataset(cfg.dataset, root=cfg.root, coarse_labels=cfg.coarse_labels)
        return dataset.train_labels.numpy(), len(dataset.test_labels)
    except DataError:
        if cfg.download:  # the run fetches what is missing or unreadable
            return None, 0
        raise


def check_models(config: RunConfig) -> None:
    """Builds each tier's model once and trains it one step on a dummy batch.

    The batch has the data set's image shape (known without loading it) and the model
    is in train mode, as in a directional pass. Raises ConfigError naming the tier, the
    model string and the cause when the factory raises or cannot be called with the
    keyword arguments, returns no ``nn.Module`` or one without parameters, the forward
    or backward pass fails, or the output is not (batch, num_classes).
    """
    shape, num_classes = data.dataset_spec(config.data.dataset, config.data.coarse_labels)
    with _single_threaded():
        for tier in config.tree.tiers:
            _probe(tier, shape, num_classes)


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    # Two images gain nothing from intra-op threads, and on a busy machine the threads'
    # contention costs seconds: a ResNet-18 step took 4 s on 2 threads, 0.2 s on 1, with
    # 2 cores at load 7.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _probe(tier: Tier, shape: tuple[int, int, int], num_classes: int) -> None:
    # fork_rng: building and probing must not move the global RNG the run seeds from.
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        model = _build(tier, shape, num_classes)
        model.train()
        images = torch.rand(PROBE_BATCH, *shape)
        labels = torch.arange(PROBE_BATCH) % num_classes
        try:
            logits = model(images)
        except Exception as exc:  # user code: any failure means the model does not fit the data
            raise _fault(tier, f"forward pass on a {_shape_text(images)} batch failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        _check_logits(tier, logits, num_classes)
        try:
            F.cross_entropy(logits, labels).backward()
        except Exception as exc:
            raise _fault(tier, f"backward pass failed: {type(exc).__name__}: {exc}") from exc


def _build(tier: Tier, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, size, _ = shape
    try:
        model = models.build_model(tier.model, in_channels=channels, image_size=size,
                                   num_classes=num_classes)
    except ConfigError as exc:  # its message already names the model string
        raise ConfigError(f"tier {tier.name!r}: {exc}") from exc
    if next(model.parameters(), None) is None:
        raise _fault(tier, "the model has no parameters to train")
    return model


def _check_logits(tier: Tier, logits: object, num_classes: int) -> None:
    if not isinstance(logits, torch.Tensor):
        raise _fault(tier, f"forward returned {type(logits).__name__}, not a tensor of logits")
    expected = (PROBE_BATCH, num_classes)
    if tuple(logits.shape) != expected:
        raise _fault(tier, f"forward returned shape {_shape_text(logits)} for {PROBE_BATCH} "
                           f"images; expected {expected} (batch, num_classes of the data set)")


def _fault(tier: Tier, cause: str) -> ConfigError:
    return ConfigError(f"tier {tier.name!r}: model {tier.model!r}: {cause}")


def _shape_text(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))
