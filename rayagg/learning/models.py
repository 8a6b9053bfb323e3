"""Model factories: the paper's device CNN, ResNet-10/18 in two layouts, and user factories.

A model is named by a string so that configs stay plain data: either one of
``BUILTIN_MODELS`` or ``"package.module:function"``, a user factory called with
the keyword arguments ``in_channels=``, ``image_size=`` and ``num_classes=``.

The ResNets come in two layouts, which differ only in the stem (see :func:`_resnet`):

- ``resnet10`` / ``resnet18``: the small-image (CIFAR) layout, a 3x3 stride-1 stem and
  no max-pool, so the residual stages see the full 28x28 / 32x32 image; pick it for
  accuracy on small images.
- ``resnet10-imagenet`` / ``resnet18-imagenet``: torchvision's ImageNet layout as the
  official FedAgg code uses it, a 7x7 stride-2 stem and a 3x3 stride-2 max-pool, so the
  stages see 7x7 / 8x8 maps; pick it to match the official code or for speed (an SGD step
  at batch 8 on one thread costs about 4x less: 3.5-4.5x measured on 1x28x28).
"""
from __future__ import annotations

from torch import nn

from rayagg.config.tree import BUILTIN_MODELS, check_model_name, resolve_factory
from rayagg.errors import ConfigError

# Name -> (BasicBlock counts per stage, stem); [2, 2, 2, 2] is torchvision's resnet18.
_RESNETS = {
    "resnet10": ([1, 1, 1, 1], "small"),
    "resnet18": ([2, 2, 2, 2], "small"),
    "resnet10-imagenet": ([1, 1, 1, 1], "imagenet"),
    "resnet18-imagenet": ([2, 2, 2, 2], "imagenet"),
}


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    """Return [3x3 conv (no bias: BN has one), BatchNorm, ReLU]."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


def _cnn(in_channels: int, num_classes: int) -> nn.Module:
    """Return the paper's device model: a 3-layer CNN of about 20K parameters.

    Widths 16-32-48 give ~19.3K parameters for 1x28x28 / 10 classes and
    ~19.5K for 3x32x32; global average pooling makes it size-agnostic.
    """
    return nn.Sequential(
        *_conv_bn_relu(in_channels, 16),
        nn.MaxPool2d(2),
        *_conv_bn_relu(16, 32),
        nn.MaxPool2d(2),
        *_conv_bn_relu(32, 48),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(48, num_classes),
    )


def _resnet(layers: list[int], in_channels: int, num_classes: int, *, stem: str) -> nn.Module:
    """Return a torchvision ``ResNet`` of ``BasicBlock``s with the given ``stem`` layout.

    ``stem="small"`` (``resnet10``, ``resnet18``) is the CIFAR adaptation: the 7x7
    stride-2 stem and its max-pool would shrink a 28x28 or 32x32 image to 7x7 / 8x8
    before the first block (1x1 in the last stage), so the stem is a 3x3 stride-1 conv
    and the max-pool is dropped; the stages see 28x28 / 32x32 down to 4x4, which is what
    small images need for accuracy, at about 4x the cost per step.

    ``stem="imagenet"`` (``resnet*-imagenet``) keeps torchvision's layout, as the official
    FedAgg code does: a 7x7 stride-2 conv (padding 3) and a 3x3 stride-2 max-pool. Use it
    to reproduce the official code or to train cheaply. Its last stage sees a 1x1 map,
    so BatchNorm there has one value per channel per sample: training needs batches of
    at least two, as everywhere in this project.

    Either way only the stem conv is replaced, to take ``in_channels``.
    """
    # Imported here: torchvision's import costs as much as torch's (every model family
    # loads), and a host of device CNNs never needs it.
    from torchvision.models.resnet import BasicBlock, ResNet

    if stem == "small":
        kernel, stride, padding = 3, 1, 1
    elif stem == "imagenet":
        kernel, stride, padding = 7, 2, 3
    else:
        raise ValueError(f"unknown ResNet stem {stem!r}; expected 'small' or 'imagenet'")
    model = ResNet(BasicBlock, layers, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=kernel, stride=stride, padding=padding,
                            bias=False)
    # Same init torchvision gives its own convs (the replaced stem missed it).
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if stem == "small":
        model.maxpool = nn.Identity()
    return model


def _check_dims(in_channels: int, image_size: int, num_classes: int) -> None:
    """Raise ConfigError unless all three sizes are positive ints."""
    for field, value in (("in_channels", in_channels), ("image_size", image_size),
                         ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{field} must be a positive int, got {value!r}")


def build_model(name: str, *, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Return a freshly initialised model named ``name``.

    ``name`` is one of ``BUILTIN_MODELS`` or ``"package.module:function"``; a user
    factory gets the same keyword arguments. Raises ConfigError for an unknown
    name, an unimportable module, a missing attribute, non-positive sizes, a
    factory that raises (including one that takes other arguments), or a factory
    that does not return an ``nn.Module``.
    """
    check_model_name(name)
    _check_dims(in_channels, image_size, num_classes)
    if name == "cnn":
        return _cnn(in_channels, num_classes)
    if name in _RESNETS:
        layers, stem = _RESNETS[name]
        return _resnet(layers, in_channels, num_classes, stem=stem)
    factory = resolve_factory(name)
    try:
        model = factory(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    except Exception as exc:  # user code: whatever it raises, the config names the fault
        raise ConfigError(f"model {name!r}: the factory failed when called with in_channels="
                          f"{in_channels}, image_size={image_size}, num_classes={num_classes}: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model {name!r}: factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def count_parameters(model: nn.Module) -> int:
    """Return the number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["BUILTIN_MODELS", "build_model", "check_model_name", "count_parameters"]
