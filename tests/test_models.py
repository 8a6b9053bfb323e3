"""Tests of rayagg.learning.models: builtin shapes and sizes, user factories, config errors."""
from __future__ import annotations

import sys
import textwrap
import uuid

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from rayagg.errors import ConfigError
from rayagg.learning.models import BUILTIN_MODELS, build_model, check_model_name, count_parameters

SHAPES = [(1, 28), (3, 32)]

USER_MODULE = textwrap.dedent(
    """
    from torch import nn

    def tiny(*, in_channels, image_size, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes))

    def not_a_module(*, in_channels, image_size, num_classes):
        return "oops"

    def broken(*, in_channels, image_size, num_classes):
        raise RuntimeError("out of widgets")

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a user factory module into tmp_path, put it on sys.path; yield its name."""
    name = f"rayagg_test_user_models_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)  # monkeypatch restores sys.path, not the module cache


@pytest.mark.parametrize("in_channels,size", SHAPES)
@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_forward_shape(name, in_channels, size):
    model = build_model(name, in_channels=in_channels, image_size=size, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.rand(2, in_channels, size, size))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("in_channels,size", SHAPES)
def test_cnn_is_about_20k_parameters(in_channels, size):
    model = build_model("cnn", in_channels=in_channels, image_size=size, num_classes=10)
    assert 15_000 <= count_parameters(model) <= 25_000


@pytest.mark.parametrize("name,low,high", [("resnet18", 10e6, 12e6), ("resnet10", 4e6, 6e6)])
def test_resnet_sizes_and_class(name, low, high):
    model = build_model(name, in_channels=3, image_size=32, num_classes=10)
    assert isinstance(model, ResNet)
    assert low <= count_parameters(model) <= high
    # The CIFAR stem: 3x3 stride 1, no max-pool.
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)


@pytest.mark.parametrize("name,layers", [("resnet10-imagenet", [1, 1, 1, 1]),
                                         ("resnet18-imagenet", [2, 2, 2, 2])])
def test_imagenet_resnet_matches_torchvision(name, layers):
    # For 3 channels / 1000 classes the ImageNet layout is torchvision's own ResNet.
    model = build_model(name, in_channels=3, image_size=32, num_classes=1000)
    reference = ResNet(BasicBlock, layers, num_classes=1000)
    assert isinstance(model, ResNet)
    assert count_parameters(model) == count_parameters(reference)
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in reference.parameters()]


def test_imagenet_resnet18_has_torchvision_resnet18_count():
    model = build_model("resnet18-imagenet", in_channels=3, image_size=32, num_classes=1000)
    assert count_parameters(model) == count_parameters(torchvision.models.resnet18()) == 11_689_512


@pytest.mark.parametrize("layout", ["", "-imagenet"])
def test_resnet_one_channel_count(layout):
    # Only the stem differs from 3 channels: 64 output channels x k x k per input channel.
    kernel = 7 if layout else 3
    one = build_model(f"resnet18{layout}", in_channels=1, image_size=28, num_classes=10)
    three = build_model(f"resnet18{layout}", in_channels=3, image_size=32, num_classes=10)
    assert count_parameters(three) - count_parameters(one) == 2 * 64 * kernel * kernel


@pytest.mark.parametrize("name", ["resnet10-imagenet", "resnet18-imagenet"])
def test_imagenet_stem(name):
    model = build_model(name, in_channels=1, image_size=28, num_classes=10)
    conv = model.conv1
    assert (conv.in_channels, conv.out_channels) == (1, 64)
    assert conv.kernel_size == (7, 7) and conv.stride == (2, 2) and conv.padding == (3, 3)
    assert conv.bias is None
    assert isinstance(model.maxpool, nn.MaxPool2d) and model.maxpool.stride == 2
    # torchvision's kaiming_normal_(fan_out): std = sqrt(2 / (64 * 7 * 7)) ~ 0.0253, where the
    # default Conv2d init is uniform with std ~ 0.082 for one input channel.
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 49)) ** 0.5, rel=0.15)


@pytest.mark.parametrize("name,in_channels,size,sizes", [
    # Map side at the input of layer1..layer4, then at layer4's output.
    ("resnet18-imagenet", 1, 28, [7, 7, 4, 2, 1]),
    ("resnet10-imagenet", 3, 32, [8, 8, 4, 2, 1]),
    ("resnet18", 1, 28, [28, 28, 14, 7, 4]),
    ("resnet10", 3, 32, [32, 32, 16, 8, 4]),
])
def test_map_sizes_of_the_stages(name, in_channels, size, sizes):
    model = build_model(name, in_channels=in_channels, image_size=size, num_classes=10).eval()
    seen = []

    def record(module, args, output):
        seen.append((tuple(args[0].shape[2:]), tuple(output.shape[2:])))

    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    handles = [stage.register_forward_hook(record) for stage in stages]
    try:
        with torch.no_grad():
            model(torch.rand(2, in_channels, size, size))
    finally:
        for handle in handles:
            handle.remove()
    sides = [inp for inp, _ in seen] + [seen[-1][1]]
    assert sides == [(side, side) for side in sizes]


@pytest.mark.parametrize("in_channels,size", SHAPES)
@pytest.mark.parametrize("name", ["resnet10-imagenet", "resnet18-imagenet"])
def test_imagenet_resnet_trains_on_batch_of_two(name, in_channels, size):
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_channels, image_size=size, num_classes=10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, labels = torch.rand(2, in_channels, size, size), torch.tensor([3, 7])
    before = model.fc.weight.detach().clone()
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.fc.weight)


def test_imagenet_resnet_cannot_train_on_one_sample():
    # Why no batch of one may reach a train-mode model: the last stage's map is 1x1.
    model = build_model("resnet10-imagenet", in_channels=1, image_size=28, num_classes=10).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.rand(1, 1, 28, 28))


def test_builds_are_independent():
    a = build_model("cnn", in_channels=1, image_size=28, num_classes=10)
    b = build_model("cnn", in_channels=1, image_size=28, num_classes=10)
    assert all(p is not q for p, q in zip(a.parameters(), b.parameters()))


def test_count_parameters_counts_frozen_too():
    model = nn.Linear(3, 2)
    model.requires_grad_(False)
    assert count_parameters(model) == 8


def test_user_factory(user_module):
    name = f"{user_module}:tiny"
    check_model_name(name)
    model = build_model(name, in_channels=1, image_size=28, num_classes=5)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 5)


@pytest.mark.parametrize(
    "name",
    ["resnet34", "", "no_colon", "a.b:c:d", "1bad:f", "mod:", ":f",
     "rayagg_no_such_module_xyz:f", "rayagg.learning.models:no_such_function"],
)
def test_bad_names_raise_config_error(name):
    with pytest.raises(ConfigError, match="model"):
        check_model_name(name)
    with pytest.raises(ConfigError):
        build_model(name, in_channels=1, image_size=28, num_classes=10)


def test_error_names_the_model_string():
    with pytest.raises(ConfigError, match="rayagg.learning.models:no_such_function"):
        build_model("rayagg.learning.models:no_such_function", in_channels=1, image_size=28, num_classes=10)


def test_factory_returning_non_module(user_module):
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        build_model(f"{user_module}:not_a_module", in_channels=1, image_size=28, num_classes=10)


def test_factory_that_raises_names_model_and_cause(user_module):
    name = f"{user_module}:broken"
    with pytest.raises(ConfigError, match=f"model '{name}'.*RuntimeError: out of widgets"):
        build_model(name, in_channels=1, image_size=28, num_classes=10)


def test_factory_without_the_keyword_arguments():
    with pytest.raises(ConfigError, match=r"model 'os:getcwd'.*in_channels=1.*TypeError"):
        build_model("os:getcwd", in_channels=1, image_size=28, num_classes=10)


def test_non_callable_attribute(user_module):
    with pytest.raises(ConfigError, match="not callable"):
        check_model_name(f"{user_module}:NOT_CALLABLE")


def test_module_failing_at_import(tmp_path, monkeypatch):
    name = f"rayagg_test_broken_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="boom"):
        check_model_name(f"{name}:f")


@pytest.mark.parametrize("field", ["in_channels", "image_size", "num_classes"])
def test_non_positive_sizes(field):
    sizes = {"in_channels": 1, "image_size": 28, "num_classes": 10, field: 0}
    with pytest.raises(ConfigError, match=field):
        build_model("cnn", **sizes)
