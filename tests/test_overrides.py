"""`--set KEY=VALUE` (rayagg/config/overrides.py): parsing, applying to the raw mapping,
the errors naming the setting, and validation by the schema afterwards."""
import pathlib

import pytest
import yaml

from rayagg.config import apply_overrides, load_config, parse_config_text, parse_override
from rayagg.errors import ConfigError

TINY = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs" / "tiny.yaml"


@pytest.fixture
def raw():
    return yaml.safe_load(TINY.read_text())


@pytest.mark.parametrize("value, expected", [
    ("0.01", 0.01), ("3", 3), ("true", True), ("false", False), ("null", None), ("~", None),
    ("[1, 2]", [1, 2]), ("{num_cpus: 1}", {"num_cpus": 1}), ("cnn", "cnn"), ("'3'", "3"), ("''", ""),
    ("a=b", "a=b"),  # only the first = separates the key
])
def test_the_value_is_read_as_yaml(value, expected):
    parts, parsed = parse_override(f"training.lr={value}")
    assert parts == ["training", "lr"]
    assert parsed == expected and type(parsed) is type(expected)


def test_spaces_around_the_key_and_value_are_dropped():
    assert parse_override(" training.lr = 0.5 ") == (["training", "lr"], 0.5)


@pytest.mark.parametrize("text, message", [
    ("training.lr", "--set training.lr: expected KEY=VALUE"),
    ("=0.1", "--set =0.1: empty key"),
    ("  =0.1", "empty key"),
    ("training..lr=0.1", "has an empty part"),
    (".lr=0.1", "has an empty part"),
    ("training.lr=", "--set training.lr=: empty value"),
    ("training.lr=  ", "empty value"),
    ("training.lr=[1", "--set training.lr=[1: the value is not valid YAML"),
])
def test_a_malformed_setting_is_an_error_naming_it(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_override(text)
    assert message in str(caught.value) and str(caught.value).startswith(f"--set {text}: ")


def test_settings_change_a_copy_and_later_ones_win(raw):
    before = yaml.safe_load(TINY.read_text())
    changed = apply_overrides(raw, ["training.lr=0.5", "training.lr=0.25", "name=other"])
    assert changed["training"]["lr"] == 0.25 and changed["name"] == "other"
    assert raw == before  # the mapping given is untouched


def test_an_integer_part_indexes_a_list(raw):
    changed = apply_overrides(raw, ["tree.tiers.2.model=resnet10", "tree.tiers.0.resources.num_cpus=2"])
    assert changed["tree"]["tiers"][2]["model"] == "resnet10"
    assert changed["tree"]["tiers"][0]["resources"] == {"num_cpus": 2}
    assert changed["tree"]["tiers"][1] == raw["tree"]["tiers"][1]


def test_a_value_may_replace_a_whole_mapping_or_list(raw):
    changed = apply_overrides(raw, ["tree.tiers.1.resources={num_cpus: 1, num_gpus: 0.5}"])
    assert changed["tree"]["tiers"][1]["resources"] == {"num_cpus": 1, "num_gpus": 0.5}


def test_a_missing_mapping_on_the_way_is_created(raw):
    assert "balance" not in raw and "emulation" not in raw
    changed = apply_overrides(raw, ["balance.policy=greedy", "emulation.slowdown.edge=2"])
    assert changed["balance"] == {"policy": "greedy"} and changed["emulation"] == {"slowdown": {"edge": 2}}
    raw["emulation"] = None  # `emulation:` with nothing under it
    assert apply_overrides(raw, ["emulation.slowdown.edge=2"])["emulation"] == {"slowdown": {"edge": 2}}


@pytest.mark.parametrize("text, message", [
    ("tree.tiers.9.count=1", "--set tree.tiers.9.count=1: tree.tiers has 3 entries (0 to 2)"),
    ("tree.tiers.3=1", "tree.tiers has 3 entries"),
    ("tree.tiers.first.count=1", "--set tree.tiers.first.count=1: tree.tiers is a list: 'first' is not an index"),
    ("tree.tiers.-1.count=1", "'-1' is not an index"),
    ("training.lr.x=1", "--set training.lr.x=1: training.lr is 0.02, not a mapping or a list: it has no 'x'"),
    ("name.first=a", "name is 'tiny', not a mapping or a list"),
])
def test_a_key_that_names_no_place_is_an_error_naming_the_setting(raw, text, message):
    with pytest.raises(ConfigError) as caught:
        apply_overrides(raw, ["training.lr=0.02", text])
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"--set {text}: ")  # the setting at fault, not the first


def test_an_empty_list_says_so(raw):
    raw["tree"]["tiers"][2]["elastic"] = {"schedule": []}
    with pytest.raises(ConfigError, match="tree.tiers.2.elastic.schedule has no entries"):
        apply_overrides(raw, ["tree.tiers.2.elastic.schedule.0.round=1"])


def test_a_top_level_that_is_no_mapping_is_left_to_the_schema():
    assert apply_overrides(None, ["name=x"]) is None
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        parse_config_text("", overrides=["name=x"])


def test_the_result_equals_the_file_edited_by_hand(tmp_path):
    text = TINY.read_text()
    edited = tmp_path / "edited.yaml"
    edited.write_text(text.replace("lr: 0.02", "lr: 0.5").replace("rounds: 3", "rounds: 7")
                      .replace("  seed: 0", "  seed: 0\n  momentum: 0.5"))
    by_hand = load_config(edited)
    assert load_config(TINY, ["training.lr=0.5", "training.rounds=7", "training.momentum=0.5"]) == by_hand
    assert load_config(TINY, ["training.lr=0.5"]) != by_hand


def test_no_settings_keep_load_configs_behaviour():
    assert load_config(TINY) == load_config(TINY, ()) == load_config(TINY, [])


def test_the_schema_judges_the_result_with_its_own_messages():
    with pytest.raises(ConfigError) as unknown:
        load_config(TINY, ["training.learning_rate=0.1"])
    message = str(unknown.value)
    assert "with --set training.learning_rate=0.1: invalid configuration" in message
    assert "training.learning_rate: unknown key" in message
    with pytest.raises(ConfigError, match="training.lr: Input should be greater than 0"):
        load_config(TINY, ["training.lr=0"])
    with pytest.raises(ConfigError, match="training.rounds: Input should be a valid integer"):
        load_config(TINY, ["training.rounds=2.5"])
    with pytest.raises(ConfigError, match="tier 'device' needs exactly one of count or fanout"):
        load_config(TINY, ["tree.tiers.2.count=30"])


def test_a_tier_may_change_from_fanout_to_count():
    config = load_config(TINY, ["tree.tiers.2.fanout=null", "tree.tiers.2.count=6"])
    assert config.tree.counts() == [1, 2, 6]


def test_types_reach_the_config():
    config = load_config(TINY, ["training.lr=0.01", "data.download=true", "data.train_samples=null",
                                "balance.policy=least-busy"])
    assert config.training.lr == 0.01 and config.data.download is True
    assert config.data.train_samples is None and config.balance.policy == "least-busy"


def test_parse_config_text_takes_settings_too():
    config = parse_config_text(TINY.read_text(), source="$X", overrides=["name=other"])
    assert config.name == "other"
    with pytest.raises(ConfigError, match=r"^\$X with --set nom=other: invalid configuration"):
        parse_config_text(TINY.read_text(), source="$X", overrides=["nom=other"])
