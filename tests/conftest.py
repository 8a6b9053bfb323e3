"""Shared fixtures: the tiny config with a private autoencoder cache, its data and plan."""
import pathlib

import pytest

from rayagg.config import load_config, parse_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    """jobs/configs/tiny.yaml, 2 rounds, autoencoder cached in a fresh folder (so the
    pretraining path is exercised once per session and the user's cache is untouched)."""
    raw = load_config(CONFIGS / "tiny.yaml").model_dump()
    raw["training"]["rounds"] = 2
    raw["autoencoder"]["cache_dir"] = str(tmp_path_factory.mktemp("autoencoder-cache"))
    return parse_config(raw)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_config):
    from rayagg.plan import load_data

    return load_data(tiny_config)


@pytest.fixture(scope="session")
def tiny_plan(tiny_config, tiny_dataset):
    from rayagg.plan import make_plan

    return make_plan(tiny_config, tiny_dataset)


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray for one test module. The dashboard is on: ray.util.state needs it."""
    import ray

    # address="local": always a fresh Ray, never one some other process left running.
    ray.init(address="local", num_cpus=2, include_dashboard=True, logging_level="ERROR",
             log_to_driver=False)
    yield
    ray.shutdown()

