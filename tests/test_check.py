"""`rayagg check` refuses what `rayagg run` would refuse, the same way (issue 21): a file
that is no text, a run name that leaves base_dir, and a split of the data that cannot
give every device its samples, checked from the numbers, or by the run's own partition
on the data set's labels. Each on a small fake Fashion-MNIST under data.root: no Ray."""
import os
import pathlib
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from rayagg.cli import main
from rayagg.config import load_config, parse_config
from rayagg.errors import ConfigError, DataError
from rayagg.learning import data, preflight
from rayagg.learning.plan import make_plan

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"
TRAIN, TEST, PUBLIC = 120, 40, 20  # the fake data set: 100 private training samples


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def fake_root(tmp_path):
    """A small Fashion-MNIST-like data set (10 classes) under tmp_path/data."""
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", TRAIN), ("t10k", TEST)):
        data.write_idx(folder / f"{split}-images-idx3-ubyte",
                       rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        data.write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    return folder


def config_dict(root, devices, **data_section) -> dict:
    """A three-tier tree of CNNs with ``devices`` leaves over 2 edges, on the fake data."""
    return {"name": "check", "tree": {"tiers": [
        {"name": "cloud", "model": "cnn"},
        {"name": "edge", "count": 2, "model": "cnn"},
        {"name": "device", "count": devices, "model": "cnn"}]},
        "data": {"root": str(root), "public_samples": PUBLIC, "test_samples": 10, **data_section}}


def write(tmp_path, raw: dict) -> pathlib.Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def refusal(result) -> str:
    """The one line a refused command printed; fails unless it exited 2 without a traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rayagg: error: "), result.output
    return lines[0].removeprefix("rayagg: error: ")


# ------------------------------------------------------------- not a text file

@pytest.mark.parametrize("command", [["check"], ["run", "--local"]])
def test_binary_garbage_is_not_a_text_yaml_file(tmp_path, command):
    path = tmp_path / "b.yaml"
    path.write_bytes(os.urandom(2000) + b"\xff\xfe\x80")  # never UTF-8
    message = refusal(invoke(*command, path, *(["--out", tmp_path / "out"] if "run" in command else [])))
    assert "not a text YAML file" in message and str(path) in message
    assert not (tmp_path / "out").exists()


def test_nul_bytes_are_not_a_text_yaml_file(tmp_path):
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"name: x\n\x00\x00\x00\n")
    with pytest.raises(ConfigError, match="not a text YAML file"):
        load_config(path)


@pytest.mark.parametrize("text,what", [("- a\n- b\n", "list"), ("just words\n", "str"),
                                       ("", "empty"), ("# only a comment\n", "empty")])
def test_a_top_level_that_is_no_mapping_is_refused(tmp_path, text, what):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    message = refusal(invoke("check", path))
    assert str(path) in message and "mapping" in message and what in message


def test_an_unreadable_config_is_named(tmp_path, monkeypatch):
    path = tmp_path / "secret.yaml"
    path.write_text("name: x\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)  # as root, chmod 0 would not stop it
    message = refusal(invoke("check", path))
    assert message == f"cannot read config file {path}: Permission denied"


# ------------------------------------------------------------- the run's name

@pytest.mark.parametrize("name", ["../../escaped", "a/b", "/abs", ".", "..", "nul\0byte", "back\\slash", ""])
def test_a_run_name_is_a_plain_name(tmp_path, name):
    raw = config_dict(tmp_path, 4)
    raw["name"] = name
    raw["output"] = {"base_dir": str(tmp_path / "runs")}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert "name:" in message and repr(name) in message and "plain name" in message


def test_a_plain_name_keeps_the_run_directory_under_base_dir(tmp_path):
    raw = {**config_dict(tmp_path, 4), "name": "..escaped.v2", "output": {"base_dir": str(tmp_path / "runs")}}
    config = parse_config(raw)
    assert config.output.run_dir(config.name, "20260101-000000").parent == tmp_path / "runs"


def test_check_refuses_an_escaping_name(tmp_path, fake_root):
    raw = {**config_dict(fake_root, 4), "name": "../../escaped", "output": {"base_dir": str(tmp_path / "runs")}}
    result = invoke("check", write(tmp_path, raw))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "name: a run name is a plain name" in result.output and "'../../escaped'" in result.output
    assert not (tmp_path / "escaped").exists()


# ------------------------------------------------------------- the data split

def test_ten_million_devices_are_refused_at_once(tmp_path, fake_root):
    """run refused this only after building a 10,000,000-leaf tree (24 s); check let it pass."""
    raw = config_dict(fake_root, 10_000_000, min_samples_per_device=1)
    started = time.monotonic()
    message = refusal(invoke("check", write(tmp_path, raw)))
    assert time.monotonic() - started < 10
    assert message == ("cannot give 10000000 devices at least 1 samples each: only "
                       f"{TRAIN - PUBLIC} samples (10000000 needed)")


@pytest.mark.parametrize("changes,expected", [
    ({"public_samples": TRAIN}, f"public_samples must be in [0, {TRAIN})"),
    ({"train_samples": 101, "min_samples_per_device": 1}, "cannot take 101 samples from 100 available"),
    ({"partition": "iid", "min_samples_per_device": 1}, "cannot give 200 devices at least 1 samples"),
])
def test_sizes_the_split_cannot_meet_are_refused_as_run_refuses_them(tmp_path, fake_root, changes, expected):
    raw = config_dict(fake_root, 200 if "partition" in changes else 4, **{"min_samples_per_device": 1, **changes})
    config = parse_config(raw)
    with pytest.raises(DataError) as ran:
        make_plan(config)  # what run does: the split fails before the autoencoder
    message = refusal(invoke("check", write(tmp_path, raw)))
    assert message == str(ran.value) and expected in message


def test_a_dirichlet_split_that_fails_on_the_labels_is_refused_as_run_refuses_it(tmp_path, fake_root):
    """8 samples over 4 devices pass every count, but the Dirichlet draws leave a device empty."""
    raw = config_dict(fake_root, 4, train_samples=8, min_samples_per_device=1)
    config = parse_config(raw)
    with pytest.raises(DataError) as ran:
        make_plan(config)
    message = refusal(invoke("check", write(tmp_path, raw)))
    assert message == str(ran.value) and "Dirichlet split" in message


def test_more_test_samples_than_the_test_split_are_refused_as_run_refuses_them(tmp_path, fake_root):
    raw = config_dict(fake_root, 4, min_samples_per_device=1)
    raw["data"]["test_samples"] = TEST + 1
    with pytest.raises(DataError) as ran:
        make_plan(parse_config(raw))
    message = refusal(invoke("check", write(tmp_path, raw)))
    assert message == str(ran.value) == f"cannot take {TEST + 1} samples from {TEST} available"


def test_a_split_that_works_passes_check(tmp_path, fake_root):
    raw = config_dict(fake_root, 4, train_samples=80, min_samples_per_device=5)
    result = invoke("check", write(tmp_path, raw))
    assert result.exit_code == 0, result.output
    preflight.check_split(parse_config(raw))


def test_a_split_that_will_be_downloaded_is_checked_from_the_numbers(tmp_path, monkeypatch):
    """download: true and nothing on disk: the labels are unknown, the set's size is not."""
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", ())
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    raw = config_dict(tmp_path / "nothing-here", 100_000, download=True, min_samples_per_device=1)
    with pytest.raises(DataError, match=f"only {60_000 - PUBLIC} samples"):
        preflight.check_split(parse_config(raw))
    preflight.check_split(parse_config(config_dict(tmp_path / "nothing-here", 4, download=True)))


def test_many_devices_fail_the_dirichlet_split_quickly():
    """The draws that fail are counted, not cut into shards: 100 draws over 30,000
    devices took 33 s; run and check each make them."""
    from rayagg.learning import partition

    labels = np.arange(55_000) % 10
    started = time.monotonic()
    with pytest.raises(DataError, match="after 100 tries"):
        partition.partition_dirichlet(labels, np.arange(55_000), 30_000, 1.0, 1, seed=0)
    assert time.monotonic() - started < 10


def test_the_dirichlet_split_is_unchanged():
    """The shards of a fixed seed, as before the draws were counted first (a run resumed
    after an upgrade must get the same shards)."""
    from rayagg.learning import partition

    labels = np.random.default_rng(1).integers(0, 10, 600)
    shards = partition.partition_dirichlet(labels, np.arange(100, 600), 7, 0.5, 5, seed=3)
    assert [len(shard) for shard in shards] == EXPECTED_SIZES
    assert [int(shard.sum()) for shard in shards] == EXPECTED_SUMS


# Recorded from rayagg/learning/partition.py before this change.
EXPECTED_SIZES = [57, 117, 70, 79, 39, 74, 64]
EXPECTED_SUMS = [20211, 41902, 23978, 28898, 14510, 24583, 20668]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_config_passes_the_split_check(path):
    config = load_config(path)
    try:
        preflight.check_data(config)
    except DataError:
        pytest.skip(f"{config.data.dataset} is not installed on this machine")
    preflight.check_split(config)
