"""Config validation: every error names the field and the value."""
import pathlib

import pytest
import yaml

from rayagg.config import load_config, parse_config
from rayagg.errors import ConfigError

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"


def base() -> dict:
    return {
        "name": "t",
        "tree": {"tiers": [
            {"name": "cloud", "model": "resnet18"},
            {"name": "edge", "count": 2, "model": "resnet10"},
            {"name": "device", "fanout": 3, "model": "cnn"},
        ]},
    }


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


@pytest.mark.parametrize("name", ["tiny", "demo", "paper-cifar10"])
def test_shipped_configs_are_valid(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.name == name


def test_paper_config_has_the_papers_shape():
    config = load_config(CONFIGS / "paper-cifar10.yaml")
    assert config.tree.counts() == [1, 15, 225]
    assert (config.data.alpha, config.training.batch_size, config.training.lr) == (3.0, 8, 0.001)


def test_counts_follow_fanout_and_count():
    assert parse_config(base()).tree.counts() == [1, 2, 6]


def test_paper_loss_defaults():
    training = parse_config(base()).training
    assert (training.temperature, training.beta, training.gamma) == (3.0, 10.0, 1.0)


def test_unknown_model_names_field_and_value():
    raw = base()
    raw["tree"]["tiers"][1]["model"] = "resnet999"
    message = error_of(raw)
    assert "tree.tiers.1.model" in message and "resnet999" in message


def test_fanout_zero_names_field():
    raw = base()
    raw["tree"]["tiers"][2]["fanout"] = 0
    message = error_of(raw)
    assert "tree.tiers.2.fanout" in message and "got 0" in message


def test_counts_that_do_not_divide():
    raw = base()
    raw["tree"]["tiers"][2] = {"name": "device", "count": 7, "model": "cnn"}
    message = error_of(raw)
    assert "count 7 is not divisible by the 2 nodes" in message


def test_negative_lr():
    raw = {**base(), "training": {"lr": -0.1}}
    message = error_of(raw)
    assert "training.lr" in message and "-0.1" in message


@pytest.mark.parametrize("where", ["top", "nested"])
def test_unknown_keys(where):
    raw = base()
    if where == "top":
        raw["trainng"] = {}
        field = "trainng"
    else:
        raw["training"] = {"learning_rate": 0.1}
        field = "training.learning_rate"
    message = error_of(raw)
    assert f"{field}: unknown key" in message


def test_root_must_be_single():
    raw = base()
    raw["tree"]["tiers"][0]["count"] = 2
    assert "root tier 'cloud' must have count 1" in error_of(raw)


def test_tier_needs_count_or_fanout():
    raw = base()
    raw["tree"]["tiers"][1] = {"name": "edge", "model": "cnn"}
    assert "exactly one of count or fanout" in error_of(raw)


def test_too_few_samples_for_leaves():
    raw = {**base(), "data": {"train_samples": 30, "min_samples_per_device": 10}}
    assert "fewer than 6 leaves" in error_of(raw)


def test_impossible_resources_are_rejected_early():
    raw = base()
    raw["tree"]["tiers"][0]["resources"] = {"num_cpus": -1}
    assert "tree.tiers.0.resources.num_cpus" in error_of(raw)
    raw["tree"]["tiers"][0]["resources"] = {"torch_threads": 0}
    assert "tree.tiers.0.resources.torch_threads" in error_of(raw)


def test_rounds_in_flight_must_be_at_least_one():
    raw = {**base(), "runtime": {"rounds_in_flight": 0}}
    assert "runtime.rounds_in_flight" in error_of(raw)
    assert parse_config(base()).runtime.rounds_in_flight == 2  # no barrier by default


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tree: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    config = parse_config(base()).with_rounds(7)
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config
    assert yaml.safe_load(path.read_text())["training"]["rounds"] == 7


def test_with_changes_validates_and_names_what_is_wrong():
    config = parse_config(base())
    changed = config.with_changes(supervision={"replace_dead": True}, training={"lr": 0.5})
    assert changed.supervision.replace_dead and changed.training.lr == 0.5
    assert changed.training.rounds == config.training.rounds  # untouched keys stay
    with pytest.raises(ConfigError, match="lr"):
        config.with_changes(training={"lr": -1})
    with pytest.raises(ConfigError, match="no section 'trainig'"):
        config.with_changes(trainig={"lr": 0.5})


@pytest.mark.parametrize("field,value", [("lr", ".inf"), ("lr", ".nan"), ("beta", ".inf"),
                                         ("temperature", "-.inf")])
def test_non_finite_numbers_name_the_field(tmp_path, field, value):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base()) + f"training:\n  {field}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"training.{field}: Input should be a finite number" in str(info.value)


def test_non_finite_numbers_in_nested_maps_are_rejected():
    raw = base()
    raw["tree"]["tiers"][0]["resources"] = {"custom": {"accelerator": float("nan")}}
    assert "tree.tiers.0.resources.custom.accelerator" in error_of(raw)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_config_is_valid(path):
    load_config(path)


@pytest.mark.parametrize("section,key", [
    ("training", "rounds"), ("training", "batch_size"), ("training", "seed"), ("data", "train_samples"),
    ("data", "min_samples_per_device"), ("autoencoder", "epochs"), ("runtime", "rounds_in_flight"),
    ("supervision", "max_restarts"), ("balance", "cooldown")])
def test_a_boolean_is_no_integer(section, key):
    message = error_of({**base(), section: {key: True}})
    assert f"{section}.{key}: Input should be a valid integer (got True)" in message


def test_a_boolean_is_no_count_in_the_tree():
    raw = base()
    raw["tree"]["tiers"][2]["fanout"] = True
    assert "tree.tiers.2.fanout: Input should be a valid integer (got True)" in error_of(raw)


@pytest.mark.parametrize("section,key", [("training", "lr"), ("runtime", "round_timeout_s"),
                                         ("supervision", "heartbeat_interval_s")])
def test_a_boolean_is_no_number(section, key):
    assert f"{section}.{key}: expected a number, not a boolean (got True)" in \
        error_of({**base(), section: {key: True}})


def test_a_negative_probe_timeout_names_its_field():
    message = error_of({**base(), "supervision": {"probe_timeout_s": -1}})
    assert "supervision.probe_timeout_s: Input should be greater than or equal to 0" in message
    assert parse_config({**base(), "supervision": {"probe_timeout_s": 0}}).supervision.probe_timeout_s == 0


def test_round_retries_default_to_one_and_need_one():
    assert parse_config(base()).supervision.round_retries == 1
    message = error_of({**base(), "supervision": {"round_retries": 0}})
    assert "supervision.round_retries: Input should be greater than or equal to 1" in message
    assert parse_config({**base(), "supervision": {"round_retries": 50}}).supervision.round_retries == 50


def test_numbers_still_read_as_yaml_writes_them():
    config = parse_config({**base(), "training": {"lr": 1, "rounds": 3, "momentum": "0.5"}})
    assert (config.training.lr, config.training.rounds, config.training.momentum) == (1.0, 3, 0.5)


def test_rounds_have_an_upper_bound():
    assert parse_config({**base(), "training": {"rounds": 1_000_000}}).training.rounds == 1_000_000
    message = error_of({**base(), "training": {"rounds": 10 ** 12}})
    assert "training.rounds: Input should be less than or equal to 1000000 (got 1000000000000)" in message
    with pytest.raises(ConfigError, match="training.rounds"):
        parse_config(base()).with_rounds(1_000_001)


@pytest.mark.parametrize("section", ["training", "churn"])
def test_seeds_are_what_numpy_accepts(section):
    raw = base()
    if section == "churn":
        raw["tree"]["tiers"][2]["elastic"] = {"min_devices": 1, "max_devices": 6,
                                              "churn": {"leave": 0.1, "join": 0.1, "seed": -1}}
        field = "tree.tiers.2.elastic.churn.seed"
    else:
        raw["training"] = {"seed": -1}
        field = "training.seed"
    assert f"{field}: Input should be greater than or equal to 0 (got -1)" in error_of(raw)
