"""Everything fixed before any node starts, and how one node is built from it.

The driver makes a :class:`Plan` once (tree, shards, test subset, the frozen
autoencoder) and hands it to every node; :func:`build_node` turns the plan into a
node's :class:`NodeState`. The in-process driver and the Ray actors build nodes with
the same function, so both runtimes train the same nodes from the same seeds.

A node's data is cut from the data set as stored (:class:`RawImages`: uint8 images and
their labels) and converted to floats where the node runs, so a host given its shards by
the driver (``data.source: driver``) and one reading its own copy train on the same
tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import numpy as np
import torch

from rayagg.config import RunConfig, Tier
from rayagg.core import balance
from rayagg.core.tree import Tree
from rayagg.learning import autoencoder, data, models, partition
from rayagg.learning.node import LocalData, NodeState, node_seed
from rayagg.learning.protocol import DistillSettings, make_optimizer
from rayagg.methods import Payloads, method_for
from rayagg.nodes import node_name, tier_of


@dataclass(frozen=True)
class Plan:
    """What every node needs to know; small enough to ship to every actor once."""

    config: RunConfig
    tree: Tree
    shards: dict[str, np.ndarray]  # leaf -> indices into the training split
    test_indices: np.ndarray  # indices into the test split, for evaluation only
    image_shape: tuple[int, int, int]
    num_classes: int
    autoencoder_blob: bytes  # the frozen autoencoder's weights file
    autoencoder_digest: str
    label_counts: dict[str, tuple[int, ...]] = field(default_factory=dict)  # leaf -> samples per class

    def tier(self, node: str) -> Tier:
        """``node``'s tier, from its name (an elastic device may not be in the tree yet)."""
        return self.config.tree.tiers[self.tier_index(node)]

    def tier_index(self, node: str) -> int:
        name = tier_of(node)
        for index, tier in enumerate(self.config.tree.tiers):
            if tier.name == name:
                return index
        raise KeyError(f"{node} is not a node name of this run's tiers")

    def is_leaf(self, node: str) -> bool:
        return self.tier_index(node) == len(self.config.tree.tiers) - 1

    @cached_property
    def shard_sizes(self) -> dict[str, int]:
        """leaf -> its shard's samples (= its bridge samples), for every leaf that may exist."""
        return {leaf: len(shard) for leaf, shard in self.shards.items()}


def make_tree(config: RunConfig) -> Tree:
    """The configured tree, every tier spread evenly over the one above (the tree the
    ``none`` balancing policy trains; the others place the leaves: see :func:`make_plan`)."""
    return Tree.balanced([tier.name for tier in config.tree.tiers], config.tree.counts())


def data_split(config: RunConfig) -> partition.Split:
    """How ``config`` divides the training split over its leaves: one shard per leaf that
    may ever exist (an elastic tier's ``max_devices``). :func:`make_plan` draws it and
    ``rayagg check`` draws the same (rayagg/learning/preflight.py)."""
    cfg = config.data
    return partition.Split(public_samples=cfg.public_samples, train_samples=cfg.train_samples,
                           num_devices=config.tree.capacities()[-1], scheme=cfg.partition,
                           alpha=cfg.alpha, min_per_device=cfg.min_samples_per_device,
                           seed=config.training.seed)


def test_subset(config: RunConfig, num_test: int) -> np.ndarray:
    """The indices of the test split every node is scored on (``data.test_samples`` of its
    ``num_test``); raises DataError when there are not that many."""
    return partition.take_subset(np.arange(num_test), config.data.test_samples, config.training.seed)


def load_data(config: RunConfig) -> data.Dataset:
    """Loads the configured data set; raises DataError when it cannot be found."""
    cfg = config.data
    return data.load_dataset(cfg.dataset, root=cfg.root, download=cfg.download,
                             coarse_labels=cfg.coarse_labels)


def make_plan(config: RunConfig, dataset: Optional[data.Dataset] = None) -> Plan:
    """Splits the data, partitions it over the leaves and pretrains (or loads) the autoencoder.

    The public slice that trains the autoencoder is drawn first and is no leaf's shard;
    the test split is used only for evaluation. An elastic leaf tier is partitioned for
    ``max_devices`` shards: the tree starts with ``count`` of them, the rest wait for
    their devices to join. The balancing policy places the leaves of the initial tree
    (rayagg/core/balance.py), knowing each shard's size and label counts.
    """
    dataset = dataset or load_data(config)
    labels = dataset.train_labels.numpy()
    # The split first: a config it refuses (by its sizes, at once) builds no tree.
    public, shards = data_split(config).draw(labels)
    test = test_subset(config, len(dataset.test_labels))
    tree = make_tree(config)
    leaf_tier = config.tree.tiers[-1].name
    leaves = [node_name(leaf_tier, index) for index in range(config.tree.capacities()[-1])]
    counts = {leaf: tuple(int(n) for n in np.bincount(labels[shard], minlength=dataset.num_classes))
              for leaf, shard in zip(leaves, shards)}
    sizes = {leaf: len(shard) for leaf, shard in zip(leaves, shards)}
    tree = balance.initial_tree(tree, balance.policy_for(config.balance), sizes, counts)
    blob, digest = _autoencoder(config, dataset, public)
    return Plan(config, tree, dict(zip(leaves, shards)), test, dataset.image_shape,
                dataset.num_classes, blob, digest, counts)


def _autoencoder(config: RunConfig, dataset: data.Dataset, public: np.ndarray) -> tuple[bytes, str]:
    channels, size, _ = dataset.image_shape
    key = autoencoder.cache_key(dataset=dataset.name, in_channels=channels, image_size=size,
                                public_samples=len(public), epochs=config.autoencoder.epochs,
                                seed=config.training.seed)
    frozen = autoencoder.load_or_pretrain(
        config.autoencoder.cache_path(), key,
        lambda: data.to_float(dataset.train_images[torch.from_numpy(public)]),
        in_channels=channels, epochs=config.autoencoder.epochs, seed=config.training.seed,
        meta={"dataset": dataset.name, "public_samples": len(public)})
    path = config.autoencoder.cache_path() / f"autoencoder-{key}.pt"
    return path.read_bytes(), frozen.digest


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays field-wise is ambiguous
class RawImages:
    """Images as the data set stores them (uint8, N x C x H x W) and their int64 labels: what
    the driver ships a host under ``data.source: driver``, a quarter of the bytes of the
    float32 images a node trains on."""

    images: np.ndarray
    labels: np.ndarray

    def floats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the images as float32 in [0, 1], the labels), converted by ``data.to_float`` as a
        host reading its own copy converts them: bit for bit the same tensors."""
        # Copies: Ray hands out read-only arrays backed by its object store, which a
        # tensor must neither write to nor keep pinned for the run.
        images, labels = torch.from_numpy(np.array(self.images)), torch.from_numpy(np.array(self.labels))
        return data.to_float(images), labels

    def local(self) -> LocalData:
        """A leaf's :class:`LocalData` from its raw shard."""
        return LocalData(*self.floats())


def raw_shard(plan: Plan, leaf: str, dataset: data.Dataset) -> RawImages:
    """``leaf``'s shard of the training split, as stored (uint8); KeyError for no leaf."""
    shard = torch.tensor(plan.shards[leaf])  # a copy: Ray hands out read-only arrays
    return RawImages(dataset.train_images[shard].numpy(), dataset.train_labels[shard].numpy())


def raw_test_split(plan: Plan, dataset: data.Dataset) -> RawImages:
    """The test images every node is scored on, as stored (uint8), with their labels."""
    index = torch.tensor(plan.test_indices)
    return RawImages(dataset.test_images[index].numpy(), dataset.test_labels[index].numpy())


def local_data(plan: Plan, leaf: str, dataset: data.Dataset) -> LocalData:
    """A leaf's private images (as floats) and labels: its shard of the training split."""
    return raw_shard(plan, leaf, dataset).local()


def frozen_autoencoder(plan: Plan) -> autoencoder.Autoencoder:
    """The frozen bridge autoencoder, verified against the plan's digest. One per process:
    the nodes of a host share it (it never trains)."""
    return autoencoder.load_bytes(plan.autoencoder_blob, plan.autoencoder_digest)


def build_node(plan: Plan, node: str, local: Optional[LocalData] = None, *,
               frozen: Optional[autoencoder.Autoencoder] = None,
               device: torch.device = torch.device("cpu")) -> NodeState:
    """Builds ``node``'s state: its model (seeded by node name) and optimizer; a leaf also
    gets ``local`` (from :func:`local_data`) and the encoder. ``frozen`` is the process's
    shared autoencoder (loaded from the plan when not given)."""
    config, tier = plan.config, plan.tier(node)
    leaf = plan.is_leaf(node)
    if leaf and local is None:
        raise ValueError(f"{node} is a leaf: build_node needs its local data")
    channels, size, _ = plan.image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(node_seed(config.training.seed, _init_name(config, node)))
        model = models.build_model(tier.model, in_channels=channels, image_size=size,
                                   num_classes=plan.num_classes).to(device)
    frozen = frozen or frozen_autoencoder(plan)
    train = config.training
    settings = DistillSettings(temperature=train.temperature, beta=train.beta, gamma=train.gamma,
                               batch_size=train.batch_size, teacher_mode=train.teacher_mode)
    optimizer = make_optimizer(model, lr=train.lr, momentum=train.momentum,
                               weight_decay=train.weight_decay)
    return NodeState(node, model, decoder=frozen.decoder, settings=settings, optimizer=optimizer,
                     seed=train.seed, local=local if leaf else None,
                     encoder=frozen.encoder if leaf else None,
                     slowdown=config.emulation.slowdown_of(node), local_epochs=config.method.kappa1)


def _init_name(config: RunConfig, node: str) -> str:
    """What seeds a node's initial model: its name, so every FedAgg node starts apart;
    under a method that averages weights, one name for all, so they start from the same
    model as FedAvg's do (averaging unrelated initial models would undo the first round)."""
    return "shared-initial-model" if method_for(config.method).shares_weights else node


def payloads(plan: Plan) -> Payloads:
    """The sizes of what the run's steps send (rayagg/core/wire.py): logits per bridge
    sample and, for a method that shares weights, each tier's model."""
    weights = {}
    if method_for(plan.config.method).shares_weights:
        channels, size, _ = plan.image_shape
        for tier in plan.config.tree.tiers:
            model = models.build_model(tier.model, in_channels=channels, image_size=size,
                                       num_classes=plan.num_classes)
            weights[tier.name] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return Payloads(plan.num_classes, plan.shard_sizes, weights)


def evaluation_split(plan: Plan, dataset: data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation images (float) and labels every node is scored on."""
    return raw_test_split(plan, dataset).floats()
