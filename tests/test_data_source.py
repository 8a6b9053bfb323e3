"""Where the hosts get their data (``data.source``): the key's validation and `rayagg check`'s
line; the driver's raw shards and test split, after a trip through pickling as Ray makes it,
equal bit for bit what a host reading its own copy computes; a resume may switch sources.
The Ray run on a machine with no data set is in tests/test_object_store.py (its RUN_DIR is
on s3:// too). No test here starts Ray."""
import pickle
import warnings

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from rayagg.cli import main
from rayagg.config import parse_config
from rayagg.errors import ConfigError
from rayagg.learning import data
from rayagg.learning.plan import Plan, data_split, evaluation_split, local_data, raw_shard, raw_test_split
from rayagg.learning.plan import test_subset as draw_test_subset  # a test_ name pytest would collect

def config_dict(**data_section) -> dict:
    return {"name": "source", "tree": {"tiers": [
        {"name": "cloud", "model": "cnn"},
        {"name": "edge", "count": 2, "model": "cnn"},
        {"name": "device", "count": 4, "model": "cnn"}]},
        "data": {"public_samples": 20, "test_samples": 10, "min_samples_per_device": 5, **data_section}}


@pytest.fixture
def fake_dataset():
    """A small Fashion-MNIST-shaped data set of random images."""
    rng = np.random.default_rng(0)
    images = lambda n: torch.from_numpy(rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8))
    labels = lambda n: torch.arange(n, dtype=torch.int64) % 10
    return data.Dataset("fashion-mnist", images(120), labels(120), images(40), labels(40), 10)


def fake_plan(raw: dict, dataset: data.Dataset) -> Plan:
    """A plan with the run's shards and test subset, and no autoencoder (not needed here)."""
    config = parse_config(raw)
    _, shards = data_split(config).draw(dataset.train_labels.numpy())
    leaves = [f"device-{index}" for index in range(len(shards))]
    return Plan(config, None, dict(zip(leaves, shards)), draw_test_subset(config, len(dataset.test_labels)),
                dataset.image_shape, dataset.num_classes, b"", "")


def shipped(raw_images):
    """``raw_images`` as a host receives it: pickled with out-of-band buffers as Ray's
    serializer does, its arrays read-only as the object store hands them out."""
    buffers = []
    blob = pickle.dumps(raw_images, protocol=5, buffer_callback=buffers.append)
    received = pickle.loads(blob, buffers=[memoryview(b.raw()).toreadonly() for b in buffers])
    assert not received.images.flags.writeable
    return received


# ------------------------------------------------------------------ the key

def test_driver_is_the_default_and_local_is_accepted():
    assert parse_config(config_dict()).data.source == "driver"
    assert parse_config(config_dict(source="local")).data.source == "local"


def test_a_bad_source_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError) as info:
        parse_config(config_dict(source="s3"))
    assert "data.source" in str(info.value) and "'s3'" in str(info.value)


@pytest.mark.parametrize("source, line", [
    ("driver", "data: fashion-mnist, source driver (the driver loads it and ships each host its shards)"),
    ("local", "data: fashion-mnist, source local (each host reads its own copy)")])
def test_check_prints_the_source(tmp_path, fake_dataset, source, line):
    root = tmp_path / "data"
    root.mkdir()
    for split, images, labels in (("train", fake_dataset.train_images, fake_dataset.train_labels),
                                  ("t10k", fake_dataset.test_images, fake_dataset.test_labels)):
        data.write_idx(root / f"{split}-images-idx3-ubyte", images[:, 0].numpy())
        data.write_idx(root / f"{split}-labels-idx1-ubyte", labels.numpy().astype(np.uint8))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(source=source, root=str(root))))
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert line in result.output.splitlines()


# ------------------------------------------------------------------ the same data both ways

def test_a_shipped_shard_is_bit_for_bit_what_a_host_reads(fake_dataset):
    plan = fake_plan(config_dict(), fake_dataset)
    for leaf, shard in plan.shards.items():
        raw = raw_shard(plan, leaf, fake_dataset)
        assert raw.images.dtype == np.uint8 and raw.labels.dtype == np.int64
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch warns of read-only arrays; none may reach it
            received = shipped(raw).local()
        # what a host computed from its own copy before data.source existed
        index = torch.tensor(shard)
        own_images, own_labels = data.to_float(fake_dataset.train_images[index]), fake_dataset.train_labels[index]
        assert received.images.dtype == torch.float32 and torch.equal(received.images, own_images)
        assert torch.equal(received.labels, own_labels)
        assert torch.equal(local_data(plan, leaf, fake_dataset).images, own_images)
        received.images.add_(1)  # a host's tensors are its own: writable, apart from the object
        assert received.images.data_ptr() != own_images.data_ptr()


def test_the_shipped_test_split_is_bit_for_bit_what_a_host_reads(fake_dataset):
    plan = fake_plan(config_dict(), fake_dataset)
    raw = raw_test_split(plan, fake_dataset)
    floats = evaluation_split(plan, fake_dataset)[0]
    assert raw.images.nbytes * 4 == floats.numel() * floats.element_size()  # a quarter of the bytes
    images, labels = shipped(raw).floats()
    index = torch.tensor(plan.test_indices)
    assert torch.equal(images, data.to_float(fake_dataset.test_images[index]))
    assert torch.equal(labels, fake_dataset.test_labels[index])
    assert len(labels) == 10


def test_a_resume_may_change_the_data_source_but_not_the_data():
    """Both sources give the hosts the same shards, so a run started with one resumes with
    the other (on another cluster, say); the data themselves stay fixed."""
    from rayagg.rundir.resume import check_resumable_config

    stored = parse_config(config_dict(source="driver"))
    check_resumable_config(stored, parse_config(config_dict(source="local")))
    with pytest.raises(ConfigError, match="differs from the run's config.yaml in data"):
        check_resumable_config(stored, parse_config(config_dict(source="local", alpha=3.0)))
