"""Weight averaging and local training, for the baselines (rayagg/methods/hierfavg.py,
local.py), as pure torch code: tensors in, tensors out, no Ray.

What travels between nodes is :class:`Weights`: a model's parameters and buffers as
numpy arrays on the CPU (Ray ships them without copying) and the samples they were
trained on, which weigh them in an average.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayagg.errors import TrainingError
from rayagg.learning.protocol import batch_sizes


@dataclass(frozen=True)
class Weights:
    """A model's state (name -> array, in ``state_dict`` order) and the samples below it."""

    state: dict[str, np.ndarray]
    samples: int

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.state.values())


def weights_of(model: nn.Module, samples: int) -> Weights:
    """A copy of ``model``'s parameters and buffers, on the CPU."""
    return Weights({name: tensor.detach().cpu().numpy().copy() for name, tensor in model.state_dict().items()},
                   samples)


def average(weights: Sequence[Weights]) -> Weights:
    """The average of ``weights``, each weighed by its samples (FedAvg's rule).

    Floating-point entries are averaged; integer ones (BatchNorm's batch counters) take
    the largest. ValueError for nothing to average, no samples, or states of different
    models (names or shapes differ)."""
    if not weights:
        raise ValueError("nothing to average")
    total = sum(item.samples for item in weights)
    if total <= 0:
        raise ValueError(f"cannot weigh {len(weights)} models by {total} samples")
    first = weights[0].state
    for item in weights[1:]:
        if list(item.state) != list(first) or any(item.state[k].shape != first[k].shape for k in first):
            raise ValueError("cannot average the weights of different models")
    state = {}
    for name, array in first.items():
        if np.issubdtype(array.dtype, np.floating):
            summed = sum(np.float64(item.samples) * item.state[name].astype(np.float64) for item in weights)
            state[name] = (summed / total).astype(array.dtype)
        else:
            state[name] = np.max([item.state[name] for item in weights], axis=0)
    return Weights(state, total)


def load_weights(model: nn.Module, weights: Weights) -> None:
    """Puts ``weights`` into ``model`` (on whatever device the model is)."""
    model.load_state_dict({name: torch.from_numpy(np.array(array)) for name, array in weights.state.items()})


def local_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                 *, epochs: int, batch_size: int, generator: torch.Generator) -> float:
    """Trains ``model`` on its own data for ``epochs`` epochs of cross-entropy; returns the
    mean loss of the batches. Batches as in distillation (``protocol.batch_sizes``: none
    of one sample); TrainingError before any step on a batch whose loss is not finite."""
    if len(images) < 2:
        return 0.0
    device = next(model.parameters()).device
    model.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for index in order.split(batch_sizes(len(images), batch_size)):
            loss = F.cross_entropy(model(images[index].to(device)), labels[index].to(device))
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingError(f"training diverged: loss {value} in local training")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(value)
    optimizer.zero_grad(set_to_none=True)  # as protocol.directional_pass: only memory between calls
    return sum(losses) / len(losses)
