"""Shared fixtures: the tiny config with a private autoencoder cache, its data and plan;
a local Ray per module for the tests marked ``ray``. Imports no Ray: the tests without
that marker must not import or start it (checked after each of them)."""
import pathlib
import subprocess
import sys
import time

import pytest

from rayagg.config import load_config, parse_config
from rayagg.observe import RunObserver

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"


@pytest.fixture(autouse=True)
def _ray_only_where_marked(request, monkeypatch):
    """A test without the ``ray`` marker may neither start Ray nor import it: the marker
    is what lets ``-m "not ray"`` run everything else quickly and without Ray."""
    if request.node.get_closest_marker("ray") is not None:
        yield
        return
    imported = "ray" in sys.modules
    if imported:
        def refuse(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} starts Ray: mark it with @pytest.mark.ray")
        monkeypatch.setattr(sys.modules["ray"], "init", refuse)
    yield
    assert imported or "ray" not in sys.modules, \
        f"{request.node.nodeid} imports Ray: mark it with @pytest.mark.ray"


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    """jobs/configs/tiny.yaml, 2 rounds, autoencoder cached in a fresh folder (so the
    pretraining path is exercised once per session and the user's cache is untouched)."""
    raw = load_config(CONFIGS / "tiny.yaml").model_dump()
    raw["training"]["rounds"] = 2
    raw["autoencoder"]["cache_dir"] = str(tmp_path_factory.mktemp("autoencoder-cache"))
    return parse_config(raw)


@pytest.fixture(scope="session")
def quick_config(tiny_config):
    """The tiny tree with a CNN cloud and fewer samples, 3 rounds: a round of the in-process
    driver takes well under a second. Checkpoints every 2 rounds, so a stop must also
    write the checkpoints that are not due."""
    return tiny_config.with_changes(
        data={"train_samples": 160, "test_samples": 100},
        training={"rounds": 3},
        supervision={"checkpoint_every": 2},
        tree={"tiers": [{**tier.model_dump(), "model": "cnn"} for tier in tiny_config.tree.tiers]})


@pytest.fixture(scope="session")
def tiny_dataset(tiny_config):
    from rayagg.learning.plan import load_data

    return load_data(tiny_config)


@pytest.fixture(scope="session")
def tiny_plan(tiny_config, tiny_dataset):
    from rayagg.learning.plan import make_plan

    return make_plan(tiny_config, tiny_dataset)


class LocalInspector(RunObserver):
    """What the in-process run held when it ended: each node's bridge-sample count and
    model identity."""

    def __init__(self, runner):
        self.runner, self.inspected = runner, {}

    def run_finished(self, outcome):
        nodes = self.runner.nodes
        self.inspected["counts"] = {node: state.bridge_sample_count for node, state in nodes.items()}
        self.inspected["models"] = [id(state.model) for state in nodes.values()]


@pytest.fixture(scope="session")
def local_run(tiny_plan, tiny_dataset, tmp_path_factory):
    """The in-process driver's run of the tiny tree, once per session: tests/test_driver.py
    checks it and tests/test_ray_runtime.py compares the Ray runtime against it. Returns
    (records, inspected, out); ``inspected`` holds what the runner had before it closed.

    One torch thread, as every tiny actor runs: float sums then add up in the same order
    as on the actors, so the runs agree to the sample."""
    import torch

    from rayagg.driver import LocalRunner
    from rayagg.loop import execute

    runner = LocalRunner(tiny_plan, tiny_dataset)
    out = tmp_path_factory.mktemp("local-run")
    inspector = LocalInspector(runner)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        records = execute(runner, out, observers=[inspector])
    finally:
        torch.set_num_threads(threads)
    return records, inspector.inspected, out


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray for one test module. The dashboard is on: ray.util.state needs it."""
    import ray

    # address="local": always a fresh Ray, never one some other process left running.
    ray.init(address="local", num_cpus=2, include_dashboard=True, logging_level="ERROR",
             log_to_driver=False)
    yield
    ray.shutdown()


def packed(config, **nodes_per_actor):
    """``config`` with some tiers packed, e.g. ``packed(config, device=2)``."""
    tiers = [{**tier.model_dump(), "nodes_per_actor": nodes_per_actor.get(tier.name, tier.nodes_per_actor)}
             for tier in config.tree.tiers]
    return config.with_changes(tree={"tiers": tiers})


class Inspector(RunObserver):
    """Records what the tests check while a Ray run's hosts are still alive: the run's Ray
    actors (needs the dashboard), tree, dead set, bridge-sample counts, wire logs and
    live record."""

    def __init__(self, runner):
        self.runner, self.inspected = runner, {}

    def run_finished(self, outcome):
        import ray
        from ray.util.state import list_actors

        from rayagg.rundir.live import read_live

        runner = self.runner
        if runner.recovery is None or not runner.hosts.handles:
            return
        # This run's cluster by address: without one, the state API refuses to choose
        # when another Ray runs on the machine (a second test session, a demo).
        address = ray.get_runtime_context().gcs_address
        self.inspected.update(
            actors=list_actors(address=address, detail=True, filters=[("ray_namespace", "=", runner.namespace)]),
            tree=runner.tree, dead=runner.dead,
            counts=runner.hosts.ask(runner.live_nodes, "bridge_sample_count"),
            wire=runner.hosts.ask(runner.live_nodes, "wire_log"),
            live=read_live(runner.run_dir) if runner.run_dir else None)


def inspected_run(runner, out, **kwargs):
    """``execute(runner, out)`` with an :class:`Inspector`; returns (records, inspected)."""
    from rayagg.loop import execute

    inspector = Inspector(runner)
    records = execute(runner, out, observers=[inspector, *kwargs.pop("observers", [])], **kwargs)
    return records, inspector.inspected


def signal_a_run(argv, out, signals, gap_s=0.2, timeout_s=240):
    """Starts `rayagg ARGV` writing to ``out``, waits until it has committed its round-0
    checkpoint (training has begun), sends ``signals`` ``gap_s`` apart and returns
    (exit code, output)."""
    rayagg = pathlib.Path(sys.executable).parent / "rayagg"
    process = subprocess.Popen([str(rayagg), *map(str, argv)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not (out / "state.json").is_file():
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.1)
        for signum in signals:
            process.send_signal(signum)
            time.sleep(gap_s)
        output, _ = process.communicate(timeout=timeout_s)
    finally:
        process.kill()
    return process.returncode, output
