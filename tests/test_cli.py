"""The command line: help, validation errors without tracebacks, status, a local run."""
import pathlib

import pytest
from click.testing import CliRunner

from rayagg.cli import main
from rayagg.events import Event, write_events
from rayagg.run import RunState

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["status"], ["pretrain-autoencoder"]])
def test_every_command_explains_itself(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and len(result.output.splitlines()) > 5


def test_check_prints_the_tree():
    result = invoke("check", CONFIGS / "demo.yaml")
    assert result.exit_code == 0
    assert "cloud: 1 x resnet18" in result.output and "device: 9 x cnn" in result.output


def test_a_bad_config_is_one_clear_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "tiny.yaml").read_text().replace("fanout: 2", "fanout: 0", 1))
    result = invoke("check", bad)
    assert result.exit_code == 2
    assert "rayagg: error:" in result.output and "tree.tiers.1.fanout" in result.output
    assert "Traceback" not in result.output


def test_run_needs_a_config_or_resume():
    result = invoke("run")
    assert result.exit_code == 2 and "give CONFIG, or --resume RUN_DIR" in result.output


def test_status_shows_moves_and_dead_nodes(tmp_path):
    RunState(3, {"cloud-0": None, "edge-0": "cloud-0"}, ["edge-1"]).save(tmp_path)
    write_events([Event.now(2, "reparent", "device-2", "device-2 moved edge-1 -> edge-0 (edge-1 died)")],
                 tmp_path / "events.parquet")
    result = invoke("status", tmp_path)
    assert result.exit_code == 0
    assert "last checkpointed round: 3" in result.output and "dead nodes: edge-1" in result.output
    assert "device-2 moved edge-1 -> edge-0" in result.output


def test_status_of_a_run_without_checkpoint(tmp_path):
    result = invoke("status", tmp_path)
    assert result.exit_code == 2 and "no state.json" in result.output


def test_local_run_writes_the_run_directory(tiny_config, tiny_plan, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config.to_yaml())  # tiny_plan has pretrained its autoencoder cache
    result = invoke("run", config, "--local", "--rounds", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "round 1/1  cloud" in result.output
    for name in ("metrics.parquet", "accuracy.png", "config.yaml", "state.json"):
        assert (tmp_path / "run" / name).is_file(), name
