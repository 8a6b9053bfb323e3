"""One tree node's learning state: model, optimizer, bridge samples. No Ray.

The Ray actor and the in-process driver both wrap a :class:`NodeState`; everything a
node does in a round is one of its methods, named as the round's steps call them
(rayagg/core/schedule.py), so every method is testable without a cluster. Under FedAgg
what crosses between nodes is only :class:`BridgeSamples` (codes and labels) and
logits: never weights. The baselines (rayagg/methods/) send weights
(``averaging.Weights``). Raw images never leave a leaf.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from rayagg.learning import autoencoder, averaging, protocol
from rayagg.errors import TrainingError
from rayagg.learning.protocol import DistillSettings


@dataclass(frozen=True)
class BridgeSamples:
    """The codes and labels of one leaf's local data: what travels up the tree."""

    leaf: str
    codes: np.ndarray  # float32, N x 4 x H/4 x W/4
    labels: np.ndarray  # int64, N

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class LocalData:
    """A leaf's private images (float in [0, 1]) and labels; they never leave the leaf."""

    images: torch.Tensor
    labels: torch.Tensor


def node_seed(seed: int, node: str) -> int:
    """A per-node seed that does not depend on process, hash salt or creation order."""
    return zlib.crc32(f"{seed}:{node}".encode())


class NodeState:
    """What one node knows and does; ``local`` and ``encoder`` are given to leaves only."""

    def __init__(self, name: str, model: nn.Module, *, decoder: nn.Module,
                 settings: DistillSettings, optimizer: torch.optim.Optimizer, seed: int,
                 local: Optional[LocalData] = None, encoder: Optional[nn.Module] = None,
                 slowdown: float = 1.0, local_epochs: int = 1):
        self.name = name
        self.model = model
        self.optimizer = optimizer
        self.settings = settings
        self.local = local
        self._encoder = encoder
        self._decoder = decoder
        self._generator = torch.Generator().manual_seed(node_seed(seed, name))
        self._bridge: dict[str, BridgeSamples] = {}
        self._decoded: dict[str, torch.Tensor] = {}
        # Concatenated inputs per subtree of several leaves: a parent asks for the same
        # leaves every round, and re-concatenating a large subtree's images twice per pair
        # is pure copying (the price: a second copy of those samples while the cache
        # holds). One leaf's samples need no concatenation, so they are never copied.
        self._batches: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self.work_s = 0.0
        self.slowdown = slowdown  # test-bench emulation of a slower machine (config.EmulationConfig)
        self.local_epochs = local_epochs  # per train_local step (method.kappa1)
        # The samples this node's weights stand for in an average: a leaf's own; a parent's,
        # those of the children it last averaged.
        self._samples = len(local.labels) if local is not None else 0

    @property
    def is_leaf(self) -> bool:
        return self.local is not None

    def encode(self) -> BridgeSamples:
        """A leaf encodes all its local samples once; returns its bridge samples."""
        if self._encoder is None or self.local is None:
            raise RuntimeError(f"{self.name} is not a leaf: it has no encoder and no local data")
        codes = autoencoder.encode(self._encoder, self.local.images)
        return BridgeSamples(self.name, codes.numpy(), self.local.labels.numpy())

    def add_bridge_samples(self, samples: BridgeSamples) -> None:
        """Keeps a leaf's codes and decodes them once (the decoder is frozen)."""
        # Copies: arrays fetched from Ray's object store are read-only.
        samples = BridgeSamples(samples.leaf, np.array(samples.codes, dtype=np.float32),
                                np.array(samples.labels, dtype=np.int64))
        self._bridge[samples.leaf] = samples
        self._decoded[samples.leaf] = autoencoder.decode(self._decoder, torch.from_numpy(samples.codes))
        self._batches.clear()

    def remove_bridge_samples(self, leaf: str) -> None:
        self._bridge.pop(leaf, None)
        self._decoded.pop(leaf, None)
        self._batches.clear()

    @property
    def bridge_leaves(self) -> list[str]:
        return list(self._bridge)

    @property
    def bridge_sample_count(self) -> int:
        return sum(len(samples) for samples in self._bridge.values())

    def logits(self, leaves: list[str]) -> torch.Tensor:
        """Teacher logits on the decoded bridge samples of ``leaves`` (in that order)."""
        started = time.perf_counter()
        inputs, _ = self._bridge_batch(leaves)
        out = protocol.teacher_logits(self.model, inputs, batch_size=self.settings.batch_size,
                                      mode=self.settings.teacher_mode)
        self._worked(started)
        return out

    def learn(self, leaves: list[str], teacher: torch.Tensor) -> float:
        """One directional pass as the student of ``teacher``; returns the mean loss.

        Raises TrainingError naming this node and its learning rate when the loss stops
        being finite (see :func:`protocol.directional_pass`).
        """
        started = time.perf_counter()
        inputs, labels = self._bridge_batch(leaves)
        real = (self.local.images, self.local.labels) if self.is_leaf else None
        try:
            loss = protocol.directional_pass(self.model, self.optimizer, inputs, labels, teacher,
                                             settings=self.settings, generator=self._generator,
                                             real=real)
        except TrainingError as exc:
            # The usual cause is a learning rate too high for this tier's model.
            lr = self.optimizer.param_groups[0]["lr"]
            raise TrainingError(f"{self.name}: {exc}; lower training.lr ({lr})") from exc
        self._worked(started)
        return loss

    # ---------------------------------------------------------- the weight-averaging methods

    def train_local(self) -> float:
        """A leaf trains ``local_epochs`` epochs on its own data; returns the mean loss."""
        if self.local is None:
            raise RuntimeError(f"{self.name} is not a leaf: it has no local data to train on")
        started = time.perf_counter()
        try:
            loss = averaging.local_epochs(self.model, self.optimizer, self.local.images, self.local.labels,
                                          epochs=self.local_epochs, batch_size=self.settings.batch_size,
                                          generator=self._generator)
        except TrainingError as exc:
            lr = self.optimizer.param_groups[0]["lr"]
            raise TrainingError(f"{self.name}: {exc}; lower training.lr ({lr})") from exc
        self._worked(started)
        return loss

    def share_weights(self) -> averaging.Weights:
        """This node's weights, to send to its parent or children."""
        return averaging.weights_of(self.model, self._samples)

    def average_weights(self, *children: averaging.Weights) -> int:
        """Takes the average of ``children``'s weights, weighed by their samples; returns
        the samples they stand for."""
        started = time.perf_counter()
        merged = averaging.average(children)
        averaging.load_weights(self.model, merged)
        self._samples = merged.samples
        self._worked(started)
        return merged.samples

    def adopt_weights(self, weights: averaging.Weights) -> int:
        """Takes its parent's weights as its own model; returns this node's samples."""
        averaging.load_weights(self.model, weights)
        return self._samples

    def _worked(self, started: float) -> None:
        """Counts the seconds since ``started`` as work; an emulated slower machine
        (``slowdown`` > 1) sleeps the difference, without using a CPU, and counts it too."""
        spent = time.perf_counter() - started
        if self.slowdown > 1:
            time.sleep(spent * (self.slowdown - 1))
        self.work_s += time.perf_counter() - started

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        return protocol.evaluate(self.model, images, labels)

    def held_bytes(self) -> dict[str, int]:
        """The bytes this node's own tensors hold, by purpose: what a node costs a host
        (benchmarks/scale.py prints it; the frozen autoencoder is the host's, not counted)."""
        def size(tensors) -> int:
            return sum(t.numel() * t.element_size() for t in tensors)
        params = list(self.model.parameters())
        local = (self.local.images, self.local.labels) if self.local is not None else ()
        momentum = (value for state in self.optimizer.state.values() for value in state.values()
                    if torch.is_tensor(value))
        return {"model": size(params) + size(self.model.buffers()),
                "gradients": size(p.grad for p in params if p.grad is not None),
                "optimizer": size(momentum),
                "local": size(local),
                "bridge": sum(s.codes.nbytes + s.labels.nbytes for s in self._bridge.values()),
                "decoded": size(self._decoded.values()),
                "batches": size(t for batch in self._batches.values() for t in batch)}

    def take_work_s(self) -> float:
        """Returns the seconds spent in logits/learn since the last call, and resets them."""
        spent, self.work_s = self.work_s, 0.0
        return spent

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        protocol.load_optimizer_state(self.optimizer, state["optimizer"])
        self._generator.set_state(state["generator"])

    def _bridge_batch(self, leaves: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [leaf for leaf in leaves if leaf not in self._bridge]
        if missing:
            raise KeyError(f"{self.name} holds no bridge samples of {missing}")
        if len(leaves) == 1:
            return self._decoded[leaves[0]], torch.from_numpy(self._bridge[leaves[0]].labels)
        key = tuple(leaves)
        if key not in self._batches:
            images = torch.cat([self._decoded[leaf] for leaf in leaves])
            labels = torch.from_numpy(np.concatenate([self._bridge[leaf].labels for leaf in leaves]))
            self._batches[key] = (images, labels)
        return self._batches[key]
