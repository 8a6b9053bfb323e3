"""BSBODP, the FedAgg protocol, as pure torch code: tensors in, tensors out, no Ray.

One parent/child pair exchanges logits on the decoded bridge samples of the child's
subtree, child first (docs/algorithm.md):

1. the parent's :func:`teacher_logits` go to the child, which runs a
   :func:`directional_pass` as the student;
2. the updated child's logits go to the parent, which runs its own pass.

The distillation term is Hinton's: ``T**2 * KL(softmax(z/T) || softmax(S/T))``, the
form the official code uses (student and teacher both divided by T, the KL scaled by
T squared so its gradient does not shrink as T grows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from rayagg.errors import TrainingError

TeacherMode = Literal["train", "eval"]


@dataclass(frozen=True)
class DistillSettings:
    """The knobs of one directional pass (defaults: the paper's T=3, beta=10, gamma=1)."""

    temperature: float = 3.0
    beta: float = 10.0
    gamma: float = 1.0
    batch_size: int = 16
    teacher_mode: TeacherMode = "train"


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Returns ``T**2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
    log_student = F.log_softmax(student / temperature, dim=1)
    soft_teacher = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_student, soft_teacher, reduction="batchmean") * temperature**2


def nonleaf_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                 *, temperature: float, beta: float) -> torch.Tensor:
    """A non-leaf student's loss: ``CE(S, y) + beta * KD(S, z)``."""
    return F.cross_entropy(student, labels) + beta * distillation_loss(student, teacher, temperature)


def leaf_loss(real_logits: torch.Tensor, real_labels: torch.Tensor, student: torch.Tensor,
              teacher: torch.Tensor, labels: torch.Tensor, *, temperature: float,
              gamma: float) -> torch.Tensor:
    """A leaf student's loss: ``CE(f(X_real), y_real) + CE(S, y) + gamma * KD(S, z)``."""
    return (F.cross_entropy(real_logits, real_labels) + F.cross_entropy(student, labels)
            + gamma * distillation_loss(student, teacher, temperature))


def make_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """The node's one optimizer; it lives across rounds so momentum carries over.

    Fused: one kernel updates every parameter, which at batch 8 took about 11 % off a
    ResNet step of the ImageNet layout on CPU and nothing off the others
    (benchmarks/step_cost.py; foreach and channels_last did not pay)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           fused=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Loads a checkpoint's optimizer state, keeping the optimizer's own ``fused`` setting:
    ``load_state_dict`` takes the saved one, and a checkpoint written before SGD was fused
    would put the node back on the slower per-parameter path."""
    fused = [group.get("fused") for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flag in zip(optimizer.param_groups, fused):
        group["fused"] = flag


def batch_sizes(count: int, batch_size: int) -> list[int]:
    """Returns the sizes of the batches ``count`` samples are cut into, for ``Tensor.split``.

    Batches hold ``batch_size`` samples, the last one what is left; a trailing batch of
    one sample joins the batch before it (17 at batch 8 gives ``[8, 9]``), because
    BatchNorm cannot use batch statistics of one sample per channel. Only ``count == 1``
    leaves a batch of one: ``[1]``. Raises ValueError for ``batch_size < 2`` or
    ``count < 0``.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (got {batch_size})")
    if count < 0:
        raise ValueError(f"cannot cut {count} samples into batches")
    full, rest = divmod(count, batch_size)
    sizes = [batch_size] * full + ([rest] if rest else [])
    if rest == 1 and full:
        sizes[-2:] = [batch_size + 1]
    return sizes


def teacher_logits(model: nn.Module, inputs: torch.Tensor, *, batch_size: int,
                   mode: TeacherMode) -> torch.Tensor:
    """Returns the model's logits on ``inputs`` (on the CPU), computed without autograd.

    ``mode="train"`` uses batch statistics as the official demo does (BatchNorm running
    statistics then still move); ``"eval"`` uses running statistics. Inputs are cut by
    :func:`batch_sizes` in both modes, so no batch holds a single sample; a lone sample
    (``len(inputs) == 1``) has no batch statistics, so it always gets eval-mode logits.
    The model's mode is restored afterwards. ``no_grad`` rather than ``inference_mode``
    because the result later feeds a loss whose graph must not hold inference tensors.
    """
    was_training = model.training
    model.train(mode == "train" and len(inputs) > 1)
    try:
        with torch.no_grad():
            device = _device_of(model)
            chunks = [model(batch.to(device))
                      for batch in inputs.split(batch_sizes(len(inputs), batch_size))]
    finally:
        model.train(was_training)
    return torch.cat(chunks).cpu()


def directional_pass(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                     labels: torch.Tensor, teacher: torch.Tensor, *, settings: DistillSettings,
                     generator: torch.Generator,
                     real: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> float:
    """Trains ``model`` for one epoch over the bridge samples against the teacher's logits.

    ``inputs`` are decoded bridge samples, ``labels`` their labels, ``teacher`` the other
    node's logits on them (same order). A leaf passes ``real`` = its local (images,
    labels), aligned with its bridge samples, and gets the leaf loss; any other node
    the non-leaf loss. Batches are cut by :func:`batch_sizes`, so every sample is
    trained on and no batch holds one sample (BatchNorm cannot train on one); a pass
    over a single bridge sample is skipped and returns 0.0.

    Returns the mean loss over the batches. Raises ValueError when inputs, labels and
    teacher differ in length, and TrainingError (before any step on it) when a batch's
    loss is not finite: training has diverged and further steps would only spread
    nan through the weights.
    """
    if not len(inputs) == len(labels) == len(teacher):
        raise ValueError(f"inputs, labels and teacher logits differ in length: "
                         f"{len(inputs)}, {len(labels)}, {len(teacher)}")
    if len(inputs) < 2:
        return 0.0
    device = _device_of(model)
    model.train()
    order = torch.randperm(len(inputs), generator=generator)
    batches = order.split(batch_sizes(len(inputs), settings.batch_size))
    losses = []
    for number, index in enumerate(batches, start=1):
        loss = _batch_loss(model, inputs, labels, teacher, index, settings, real, device)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingError(
                f"training diverged: loss {value} at batch {number} of {len(batches)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(value)
    # Every pass starts by zeroing them: gradients kept between passes are only memory
    # (a model's size per node, a sixth of a device's state on scale-10k).
    optimizer.zero_grad(set_to_none=True)
    return sum(losses) / len(losses)


def _batch_loss(model, inputs, labels, teacher, index, settings, real, device) -> torch.Tensor:
    bridge = inputs[index].to(device)
    target = labels[index].to(device)
    soft = teacher[index].to(device)
    if real is None:
        return nonleaf_loss(model(bridge), soft, target, temperature=settings.temperature,
                            beta=settings.beta)
    # One forward over real and bridge samples together: half the per-step overhead,
    # which dominates at the paper's batch size of 8.
    real_images, real_labels = real[0][index].to(device), real[1][index].to(device)
    logits = model(torch.cat([real_images, bridge]))
    return leaf_loss(logits[: len(index)], real_labels, logits[len(index):], soft, target,
                     temperature=settings.temperature, gamma=settings.gamma)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 256) -> tuple[float, float]:
    """Returns (top-1 accuracy, mean cross-entropy) in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    correct, loss_sum = 0, 0.0
    try:
        with torch.inference_mode():
            for batch, target in zip(images.split(batch_size), labels.split(batch_size)):
                logits = model(batch.to(device))
                target = target.to(device)
                loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
                correct += (logits.argmax(dim=1) == target).sum().item()
    finally:
        model.train(was_training)
    return correct / len(labels), loss_sum / len(labels)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
