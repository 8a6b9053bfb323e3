"""Preflight: the data set is found without being read, every tier's model trains one step."""
import pathlib
import re

import pytest
import torch

from rayagg.learning import data, models, preflight
from rayagg.config import load_config, parse_config
from rayagg.errors import ConfigError, DataError

TESTS = pathlib.Path(__file__).resolve().parent
CONFIGS = TESTS.parent / "jobs" / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


@pytest.fixture(autouse=True)
def factories_importable(monkeypatch):
    """Puts tests/ on sys.path so model strings like ``factories:small`` resolve."""
    monkeypatch.syspath_prepend(str(TESTS))


def config_with(tier: str = "edge", model: str = "cnn", **data_section):
    """A three-tier config of small models in which ``tier`` uses ``model``."""
    models = {"cloud": "cnn", "edge": "factories:small", "device": "cnn", tier: model}
    return parse_config({"name": "preflight", "data": data_section, "tree": {"tiers": [
        {"name": "cloud", "model": models["cloud"]},
        {"name": "edge", "count": 2, "model": models["edge"]},
        {"name": "device", "fanout": 2, "model": models["device"]},
    ]}})


def fault_of(config) -> str:
    with pytest.raises(ConfigError) as info:
        preflight.check_models(config)
    return str(info.value)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_shipped_models_pass(path):
    preflight.check_models(load_config(path))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_shipped_data_is_found(path):
    config = load_config(path)
    if config.data.dataset == "fashion-mnist" and config.data.root is None:
        try:
            data.find_fashion_mnist()
        except DataError:
            pytest.skip("Fashion-MNIST is not installed on this machine")
    preflight.check_data(config)


def test_working_user_factories_pass_on_every_data_set():
    for dataset in data.DATASETS:
        preflight.check_models(config_with("device", "factories:small", dataset=dataset))


@pytest.mark.parametrize("model", models.BUILTIN_MODELS)
def test_builtin_models_pass_on_every_data_set(model):
    # The ImageNet-layout ResNets end in a 1x1 map: their train-mode BatchNorm needs the
    # probe's batch of two (one sample raises).
    for dataset in data.DATASETS:
        preflight.check_models(config_with("cloud", model, dataset=dataset))


@pytest.mark.parametrize("model,cause", [
    ("factories:raises", "RuntimeError: no widgets left to build this model"),
    ("os:getcwd", "TypeError"),
    ("factories:returns_a_dict", "factory returned dict, not a torch.nn.Module"),
    ("factories:without_parameters", "the model has no parameters"),
    ("factories:three_channel_input", "forward pass on a (2, 1, 28, 28) batch failed"),
    ("factories:returns_a_tuple", "forward returned tuple, not a tensor of logits"),
    ("factories:detached_output", "backward pass failed"),
])
def test_a_broken_model_names_tier_model_and_cause(model, cause):
    message = fault_of(config_with("device", model))
    assert message.startswith("tier 'device': model ")
    assert repr(model) in message and cause in message


def test_wrong_output_width_names_the_edge_tier():
    message = fault_of(config_with("edge", "factories:edge_with_13_outputs"))
    assert message.startswith("tier 'edge': model 'factories:edge_with_13_outputs': ")
    assert "shape (2, 13)" in message and "expected (2, 10)" in message
    assert "device" not in message


def test_models_get_the_data_sets_shape_and_class_count():
    config = config_with("edge", "factories:three_channel_input", dataset="cifar100",
                         coarse_labels=True)
    preflight.check_models(config)  # 3 channels fit CIFAR
    assert "expected (2, 20)" in fault_of(
        config_with("edge", "factories:edge_with_13_outputs", dataset="cifar100",
                    coarse_labels=True))


def test_probing_does_not_move_the_global_rng():
    before = torch.get_rng_state()
    preflight.check_models(config_with())
    assert torch.equal(before, torch.get_rng_state())


def test_a_root_without_the_data_set_fails_before_loading(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"under data.root {tmp_path}")):
        preflight.check_inputs(config_with(root=str(tmp_path)))
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        preflight.check_data(config_with(dataset="cifar10", root=str(tmp_path)))
    preflight.check_data(config_with(dataset="cifar10", root=str(tmp_path), download=True))


def test_probing_leaves_torchs_thread_count_alone():
    before = torch.get_num_threads()
    preflight.check_models(config_with())
    assert torch.get_num_threads() == before
