"""The command line: help, validation errors without tracebacks, status, a local run."""
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import signal_a_run

from rayagg.rundir import store
from rayagg.cli import main
from rayagg.core.events import Event
from rayagg.rundir.events import write_events
from rayagg.files import file_sha256
from rayagg.learning.node import BridgeSamples
from rayagg.learning.plan import make_plan
from rayagg.errors import ConfigError
from rayagg.rundir.manifest import RunState
from rayagg.rundir.resume import check_resumable_config

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


def test_status_shows_which_nodes_each_host_carries(tiny_config, tmp_path):
    tiers = [{**t.model_dump(), "nodes_per_actor": 3 if t.name == "device" else 1}
             for t in tiny_config.tree.tiers]
    (tmp_path / "config.yaml").write_text(tiny_config.with_changes(tree={"tiers": tiers}).to_yaml())
    RunState(1, {}, ["device-1"]).save(tmp_path)
    result = invoke("status", tmp_path)
    assert result.exit_code == 0, result.output
    assert "edge: 2 host(s), one node each" in result.output
    assert "device-host-0    device-0..2  (dead: device-1)" in result.output
    assert "device-host-1    device-3\n" in result.output


def test_status_of_a_directory_that_is_no_run(tmp_path):
    result = invoke("status", tmp_path)
    assert result.exit_code == 2 and "not a rayagg run directory" in result.output


def test_status_of_a_run_stopped_before_its_first_checkpoint(tmp_path):
    (tmp_path / "config.yaml").write_text("name: tiny\n")
    result = invoke("status", tmp_path)
    assert result.exit_code == 0, result.output
    assert "no checkpoint" in result.output and "before its first checkpoint" in result.output


def test_local_run_writes_the_run_directory(finished_run):
    _, run, output = finished_run  # `rayagg run CONFIG --local --rounds 2 --out RUN`
    assert "round 1/2  cloud" in output and "round 2/2  cloud" in output
    for name in ("metrics.parquet", "accuracy.png", "config.yaml", "state.json"):
        assert (run / name).is_file(), name


# ------------------------------------------------------------------ run directories, resume

@pytest.fixture(scope="module")
def finished_run(quick_config, tiny_dataset, tmp_path_factory):
    """A finished 2-round in-process run made through the CLI (quick_config has 3 rounds:
    ``--rounds`` overrides them), with a bridge-sample store added to its manifest (a Ray
    run writes one; the in-process driver does not). Returns (config file, run, output)."""
    folder = tmp_path_factory.mktemp("finished")
    config = folder / "quick.yaml"
    config.write_text(quick_config.to_yaml())
    result = invoke("run", config, "--local", "--rounds", "2", "--out", folder / "run")
    assert result.exit_code == 0, result.output
    run = folder / "run"
    bridge = store.store_path(run, "cloud-0")
    shards = make_plan(quick_config, tiny_dataset).shards
    store.write_bridge_samples([BridgeSamples(leaf, np.zeros((len(shard), 4, 7, 7), np.float32),
                                              np.zeros(len(shard), np.int64))
                                for leaf, shard in shards.items()], bridge)
    state = RunState.load(run)
    relative = str(bridge.relative_to(run))
    RunState(state.round, state.parent_of, state.dead, state.checkpoints,
             {**state.digests, relative: file_sha256(bridge)}).save(run)
    return config, run, result.output


@pytest.fixture
def run_copy(finished_run, tmp_path):
    config, run, _ = finished_run
    shutil.copytree(run, tmp_path / "run")
    return config, tmp_path / "run"


def resume(run, *args):
    """`rayagg run --resume RUN --rounds 3`: must fail before any file changes or Ray starts."""
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    started = time.monotonic()
    result = invoke("run", "--resume", run, "--rounds", "3", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert time.monotonic() - started < 30  # no Ray, no actors
    return result.output


def test_out_onto_a_run_is_an_error_and_changes_nothing(run_copy):
    config, run = run_copy
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = invoke("run", config, "--local", "--out", run)
    assert result.exit_code == 2 and "already holds a run" in result.output
    assert "--resume" in result.output and "--overwrite" in result.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_overwrite_clears_the_old_run_first(run_copy):
    config, run = run_copy
    write_events([Event.now(1, "declare_dead", "edge-0", "old run's event")], run / "events.parquet")
    result = invoke("run", config, "--local", "--rounds", "1", "--out", run, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (run / "events.parquet").exists() and RunState.load(run).round == 1
    assert "old run's event" not in invoke("status", run).output


def test_out_under_a_file_is_a_clear_error(quick_config, tmp_path):
    (tmp_path / "afile").write_text("x")
    config = tmp_path / "quick.yaml"
    config.write_text(quick_config.to_yaml())
    result = invoke("run", config, "--local", "--out", tmp_path / "afile" / "sub")
    assert result.exit_code == 2 and "is a file" in result.output and "Traceback" not in result.output


def test_resume_of_a_finished_run_says_so(finished_run):
    _, run, _ = finished_run
    result = invoke("run", "--resume", run)
    assert result.exit_code == 2 and "already finished round 2 of 2" in result.output


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_damaged_checkpoint_fails_the_resume_before_anything_starts(run_copy, damage):
    _, run = run_copy
    path = next(iter(sorted((run / "checkpoints").rglob("*.pt"))))
    data = bytearray(path.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    assert f"{path} is corrupt" in resume(run)


def test_a_flipped_byte_in_the_bridge_store_fails_the_resume(run_copy):
    _, run = run_copy
    path = store.store_path(run, "cloud-0")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert f"{path} is corrupt" in resume(run)


def test_a_deleted_manifest_is_named_not_mistaken_for_no_checkpoint(run_copy):
    _, run = run_copy
    (run / "state.json").unlink()
    output = resume(run)
    assert "state.json is missing although" in output and "checkpoint file" in output


@pytest.mark.parametrize("name", ["state.json", "metrics.parquet", "events.parquet"])
def test_a_corrupt_run_file_is_an_error_naming_it(run_copy, name):
    _, run = run_copy
    if name == "events.parquet":
        write_events([Event.now(1, "declare_dead", "edge-0", "x")], run / name)
    path = run / name
    data = bytearray(path.read_bytes())
    # A byte the reader uses: inside the rows (Parquet) or the JSON.
    marker = {"state.json": b'"round"', "metrics.parquet": b"cloud-0",
              "events.parquet": b"declare_dead"}[name]
    data[data.index(marker) + 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert str(path) in resume(run)
    result = invoke("status", run)
    assert result.exit_code == 2 and str(path) in result.output and "Traceback" not in result.output


def test_a_resume_with_another_tree_is_refused(run_copy, tmp_path):
    config, run = run_copy
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text().replace("model: cnn", "model: resnet10", 1))
    assert "differs from the run's config.yaml in tree" in resume(run, other)


def test_a_resume_may_change_where_nodes_run_but_not_what_they_are(quick_config):
    moved = quick_config.with_changes(
        tree={"tiers": [{**t.model_dump(), "nodes_per_actor": 2 if t.name == "device" else 1,
                         "resources": {"num_cpus": 2}} for t in quick_config.tree.tiers]})
    check_resumable_config(quick_config, moved)  # packing and requests: where nodes run
    other = quick_config.with_changes(training={"lr": 0.5})
    with pytest.raises(ConfigError, match="differs from the run's config.yaml in training"):
        check_resumable_config(quick_config, other)


@pytest.fixture(scope="module")
def quick_plan(quick_config, tiny_dataset):
    return make_plan(quick_config, tiny_dataset)  # pretrains the autoencoder once, if needed


@pytest.fixture
def web_server():
    """A port where something listens that is not Ray: Python's HTTP server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "http.server did not start"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


@pytest.mark.ray  # --address imports Ray (it never starts or joins one here)
@pytest.mark.parametrize("where", ["nothing listens", "a web server listens"])
def test_an_address_that_is_not_a_ray_cluster_fails_fast_and_leaves_nothing(where, quick_config, quick_plan,
                                                                            tmp_path, monkeypatch, request):
    """Refused within seconds naming the address (ray.init would retry a web server for
    10+ minutes), and RUN_DIR is not created: the same command works once the cluster
    is there, with no --overwrite. ``quick_plan``: the autoencoder is cached already."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # what the CLI sets for --address, undone after
    address = "127.0.0.1:1" if where == "nothing listens" else request.getfixturevalue("web_server")
    config, out = tmp_path / "quick.yaml", tmp_path / "runs" / "run"
    config.write_text(quick_config.to_yaml())
    started = time.monotonic()
    result = invoke("run", config, "--address", address, "--out", out)
    assert result.exit_code == 2, result.output
    expected = "cannot reach the Ray cluster at" if where == "nothing listens" else "it is not a Ray cluster"
    assert f"{expected}" in result.output and repr(address) in result.output, result.output
    assert time.monotonic() - started < 30
    assert not (tmp_path / "runs").exists()


def test_a_run_directory_that_cannot_be_created_is_refused_before_anything_starts(quick_config, tmp_path):
    config = tmp_path / "quick.yaml"
    config.write_text(quick_config.to_yaml())
    result = invoke("run", config, "--local", "--out", "/proc/rayagg-run")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "cannot create or write the run directory /proc/rayagg-run" in result.output
    assert "rayagg: run" not in result.output  # refused before the run began
    elsewhere = quick_config.with_changes(output={"base_dir": "/proc/rayagg"})
    config.write_text(elsewhere.to_yaml())
    result = invoke("run", config, "--local")
    assert result.exit_code == 2 and "cannot create or write the run directory /proc/rayagg/" in result.output


def test_ctrl_c_while_the_autoencoder_pretrains_exits_130_and_caches_nothing(quick_config, tmp_path):
    """A real SIGINT to a real `rayagg run` once pretraining has begun (its lock file is
    there), before the run's own signal handling is in place."""
    cache, out, config = tmp_path / "cache", tmp_path / "run", tmp_path / "quick.yaml"
    config.write_text(quick_config.with_changes(autoencoder={"cache_dir": str(cache)}).to_yaml())
    rayagg = pathlib.Path(sys.executable).parent / "rayagg"
    # SIGINT as a terminal delivers it: a suite started in the background of a script
    # inherits SIGINT ignored (POSIX shells do that to background jobs), and Python then
    # installs no KeyboardInterrupt handler, so the signal would be lost before rayagg's own.
    process = subprocess.Popen([str(rayagg), "run", str(config), "--local", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list(cache.glob("*.lock")):
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.1)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, output
    assert "stopped by SIGINT while starting" in output and "Aborted" not in output, output
    assert not list(cache.glob("*.pt")) and not out.exists()


def test_a_second_sigint_stops_at_once(quick_config, tmp_path):
    """Real signals to a real run (the in-process driver, so no Ray is needed): the first
    SIGINT asks for a stop after the round in flight, the second abandons it at once."""
    config, out = tmp_path / "quick.yaml", tmp_path / "run"
    config.write_text(quick_config.with_rounds(50).to_yaml())
    code, output = signal_a_run(["run", config, "--local", "--out", out], out,
                                [signal.SIGINT, signal.SIGINT])
    assert code == 130, output
    assert "the rounds in flight were abandoned" in output and "Traceback" not in output
    assert RunState.load(out).round < 50


def test_a_diverging_run_stops_naming_the_node_and_the_round(quick_config, tmp_path):
    config = tmp_path / "quick.yaml"
    config.write_text(quick_config.with_changes(training={"lr": 1e30}).to_yaml())
    result = invoke("run", config, "--local", "--rounds", "1", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "round 1: device-0:" in result.output and "lower training.lr" in result.output
