"""Tests of rayagg.models: builtin shapes and sizes, user factories, config errors."""
from __future__ import annotations

import sys
import textwrap
import uuid

import pytest
import torch
from torch import nn
from torchvision.models.resnet import ResNet

from rayagg.errors import ConfigError
from rayagg.models import BUILTIN_MODELS, build_model, check_model_name, count_parameters

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
     "rayagg_no_such_module_xyz:f", "rayagg.models:no_such_function"],
)
def test_bad_names_raise_config_error(name):
    with pytest.raises(ConfigError, match="model"):
        check_model_name(name)
    with pytest.raises(ConfigError):
        build_model(name, in_channels=1, image_size=28, num_classes=10)


def test_error_names_the_model_string():
    with pytest.raises(ConfigError, match="rayagg.models:no_such_function"):
        build_model("rayagg.models:no_such_function", in_channels=1, image_size=28, num_classes=10)


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
