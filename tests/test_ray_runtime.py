"""The tiny tree on a local Ray: one actor per node, bridge samples, wire, metrics,
agreement with the in-process driver, `rayagg bench` (Ray against the in-process driver),
and failing fast on impossible resources."""
import json
import signal
import time
from dataclasses import replace

import pytest
from click.testing import CliRunner
from conftest import inspected_run, packed, signal_a_run

from rayagg.rundir.resume import load_for_resume
from rayagg.cli import main
from rayagg.config import parse_config
from rayagg.errors import NodeError, ResourceError
from rayagg.learning.plan import make_plan
from rayagg.rundir.metrics import read_metrics
from rayagg.loop import execute
from rayagg.rundir.manifest import RunState
from rayagg.runtime.runner import RayRunner

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_run(ray_session, tiny_config, tiny_plan, tmp_path_factory):
    runner = RayRunner(tiny_plan)
    out = tmp_path_factory.mktemp("ray-run")
    records, inspected = inspected_run(runner, out)
    return runner, records, out, inspected


def test_one_live_actor_per_node_with_its_tiers_resources(ray_run, tiny_plan):
    runner, _, _, inspected = ray_run
    alive = [a for a in inspected["actors"] if a.state == "ALIVE"]
    actors = {a.name: a for a in alive if a.class_name == "NodeHost"}
    assert sorted(actors) == sorted(tiny_plan.tree.nodes)
    assert [a.name for a in alive if a.class_name == "SupervisorActor"] == ["supervisor"]
    for name, actor in actors.items():
        wanted = tiny_plan.tier(name).resources.num_cpus
        assert actor.required_resources.get("CPU") == pytest.approx(wanted)
    assert len({a.pid for a in actors.values()}) == len(actors)


def test_actors_see_no_gpu_and_threads_follow_cpus(ray_run):
    runner, _, _, inspected = ray_run
    for info in runner.placement.values():
        assert info.cuda_visible_devices == "" and info.device == "cpu"
        assert info.torch_threads == 1  # every tiny tier asks for under 2 CPUs


def test_root_holds_every_bridge_sample(ray_run, tiny_plan):
    runner, _, _, inspected = ray_run
    counts = inspected["counts"]
    assert counts[tiny_plan.tree.root] == sum(len(s) for s in tiny_plan.shards.values())
    for node, count in counts.items():
        assert count == sum(len(tiny_plan.shards[leaf]) for leaf in tiny_plan.tree.leaves(node))


def test_only_codes_labels_and_logits_cross_actor_boundaries(ray_run, tiny_plan):
    runner, _, _, inspected = ray_run
    channels, height, width = tiny_plan.image_shape
    code_shape = (4, height // 4, width // 4)
    kinds = set()
    for node, log in inspected["wire"].items():
        for entry in log:
            kinds.add(entry["kind"])
            if entry["kind"] == "bridge_samples":
                assert entry["sample_shapes"] == (code_shape, ())
            else:
                assert entry["sample_shapes"] == ((tiny_plan.num_classes,),)
    assert kinds == {"bridge_samples", "logits"}
    leaf_log = inspected["wire"]["device-0"]
    assert {(e["direction"], e["kind"]) for e in leaf_log} == {
        ("sent", "bridge_samples"), ("sent", "logits"), ("received", "logits")}


def test_metrics_and_plot_written_and_cloud_learns(ray_run, tiny_plan, tiny_config):
    _, records, out, _ = ray_run
    assert (out / "metrics.parquet").is_file() and (out / "accuracy.png").is_file()
    assert len(records) == tiny_config.training.rounds * len(tiny_plan.tree.nodes)
    cloud = [r.accuracy for r in records if r.node == tiny_plan.tree.root]
    assert cloud[-1] > 0.3  # chance is 0.1


def test_live_view_shows_every_node_where_it_runs(ray_run, tiny_plan):
    runner, records, _, inspected = ray_run
    view = inspected["live"]["view"]  # RUN_DIR/live.json as the run's last round left it
    last = max(r.round for r in records)
    assert (view["done"], view["rounds"], view["in_flight"]) == (last, last, [])
    nodes = {row["node"]: row for row in view["nodes"]}
    assert set(nodes) == set(tiny_plan.tree.nodes)
    accuracy = {r.node: r.accuracy for r in records if r.round == last}
    for node, row in nodes.items():
        assert row["status"] == "live" and row["machine"] and row["host"] == runner.hosts.home[node]
        assert 0 <= row["heartbeat_age_s"] < 10 and row["done"] == last
        assert row["accuracy"] == pytest.approx(accuracy[node])
        assert row["parent"] == (tiny_plan.tree.parent_of[node] or "")
    assert nodes[tiny_plan.tree.root]["bridge_samples"] == sum(len(s) for s in tiny_plan.shards.values())


def test_ray_and_in_process_driver_agree(ray_run, local_run):
    _, ray_records, _, _ = ray_run
    local_records, _, _ = local_run  # run with one torch thread, as every tiny actor runs
    ray_acc = {(r.round, r.node): r.accuracy for r in ray_records}
    local_acc = {(r.round, r.node): r.accuracy for r in local_records}
    assert ray_acc.keys() == local_acc.keys()
    # Same schedule, same seeds, same thread count: the runs agree to the sample
    # (1% of the 300 test images allows for a stray float difference).
    for key in ray_acc:
        assert ray_acc[key] == pytest.approx(local_acc[key], abs=0.01), key


def test_impossible_request_fails_in_seconds(ray_session, tiny_config, tiny_plan):
    raw = tiny_config.model_dump()
    raw["tree"]["tiers"][0]["resources"] = {"num_cpus": 0.5, "num_gpus": 1}
    plan = make_plan(parse_config(raw))
    started = time.monotonic()
    with pytest.raises(ResourceError) as info:
        RayRunner(plan).start()
    assert time.monotonic() - started < 10
    assert "tier 'cloud'" in str(info.value) and "'GPU': 1" in str(info.value)


def test_sigterm_mid_round_then_resume_equals_the_uninterrupted_run(ray_run, tiny_config, tiny_plan,
                                                                    tmp_path):
    """A real SIGTERM to a real `rayagg run` while round 1 trains: the round finishes and is
    checkpointed (no round is trained twice, none half), the exit code is 143, and a
    resume reproduces the uninterrupted run (the ray_run fixture) exactly. The run packs
    edges and devices two to a host: packing changes processes, never results."""
    _, uninterrupted, _, _ = ray_run
    config = packed(tiny_config, edge=2, device=2)
    plan = replace(tiny_plan, config=config)
    config_file, out = tmp_path / "tiny.yaml", tmp_path / "run"
    config_file.write_text(config.to_yaml())  # its autoencoder cache is the test session's
    code, output = signal_a_run(["run", config_file, "--out", out], out, [signal.SIGTERM])
    assert code == 143, output
    assert "stopping after the oldest round in flight" in output and "Traceback" not in output
    assert "*** SIGTERM received" not in output  # Ray's own handler would have aborted
    state = load_for_resume(out, plan) if RunState.load(out).round < 2 else None
    assert RunState.load(out).round >= 1
    if state is not None:
        execute(RayRunner(plan), out, resume=state)
    resumed = read_metrics(out / "metrics.parquet")
    assert sorted((r.round, r.node, r.accuracy, r.loss) for r in resumed) == \
        sorted((r.round, r.node, r.accuracy, r.loss) for r in uninterrupted)


def test_an_actor_that_fails_to_start_reports_its_own_exception(ray_session, tiny_config):
    """`os:getcwd` passes the name check but cannot build a model: the actor's constructor
    raises, and the error must carry that cause, not Ray's bare ActorDiedError."""
    raw = tiny_config.model_dump()
    cloud, _, device = raw["tree"]["tiers"]
    device.update(fanout=1, model="os:getcwd")
    raw["tree"]["tiers"] = [cloud, device]  # two actors are enough
    with pytest.raises(NodeError) as info:
        runner = RayRunner(make_plan(parse_config(raw)))
        try:
            runner.start()
        finally:
            runner.close()
    message = str(info.value)
    assert info.value.node == "device-0" and "start failed" in message
    assert "getcwd" in message and "ActorDiedError" not in message


def test_bench_runs_both_drivers_and_explains_the_round(ray_session, quick_config, tmp_path):
    config_path, out, figures = tmp_path / "quick.yaml", tmp_path / "bench", tmp_path / "bench.json"
    trace_file = tmp_path / "trace.json"
    config_path.write_text(packed(quick_config, edge=2, device=4).to_yaml())  # 3 processes
    result = CliRunner().invoke(main, ["bench", str(config_path), "--rounds", "2", "--json", str(figures),
                                       "--out", str(out), "--trace", str(trace_file)])
    assert result.exit_code == 0, result.output
    r = json.loads(figures.read_text())
    ray_records = read_metrics(out / "ray" / "metrics.parquet")
    local_records = read_metrics(out / "local" / "metrics.parquet")
    assert r["rounds"] == 2 and {x.round for x in local_records} == {1, 2}
    # Two rounds: the median is their mean.
    assert r["seconds_per_round"] == pytest.approx(sum({x.round: x.round_s for x in ray_records}.values()) / 2)
    assert r["inprocess_seconds_per_round"] == pytest.approx(
        sum({x.round: x.round_s for x in local_records}.values()) / 2)
    assert r["ratio"] == pytest.approx(r["seconds_per_round"] / r["inprocess_seconds_per_round"])
    # The critical path is made of calls the rounds waited for: never longer than the rounds.
    assert 0 < r["critical_path_s"] <= r["seconds_per_round"] * 1.001
    assert r["critical_path_ratio"] >= 0.999 and 0 <= r["overhead_share"] < 1
    # Which nodes the path crosses depends on measured durations (with CNNs everywhere the
    # packed edge host's chain may outlast the cloud's); what holds: it is made of the
    # tree's nodes and their calls on it add up to the path.
    by_node = r["critical_path_by_node"]
    assert set(by_node) <= {x.node for x in ray_records}
    assert sum(sum(calls.values()) for calls in by_node.values()) == pytest.approx(2 * r["critical_path_s"])
    # Four devices to a host: the steps they take together travel in one Ray call.
    assert 0 < r["calls_per_round"] < r["steps_per_round"]
    assert f"Ray calls             {r['calls_per_round']:.0f} per round" in result.output
    assert r["gflops_machine"] > 0 and 0 < r["gflops_achieved"] < r["gflops_machine"]
    assert r["peak_rss_bytes"] > 100 * 2**20 and r["inprocess_peak_rss_bytes"] > 100 * 2**20
    trained_per_round = 2 * sum(x.bridge_samples for x in ray_records if x.round == 1 and x.tier != "cloud")
    assert r["samples_per_second"] == pytest.approx(2 * trained_per_round / (2 * r["seconds_per_round"]))
    assert 0 <= r["max_accuracy_difference"] <= 1
    assert f"ratio {r['ratio']:.2f}" in result.output and "critical path" in result.output
    # --trace: a track per host (3) and node (7), under "critical path"; a slice per traced
    # call: per round, a logits and a learn on each side of the 6 (child, parent) pairs and
    # an evaluate of each scored node; the critical path's copies add up to the path.
    trace = json.loads(trace_file.read_text())
    assert r["trace_file"] == str(trace_file) and "rayagg: trace in" in result.output
    meta = [e for e in trace["traceEvents"] if e["ph"] == "M"]
    processes = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert len(processes) == 4 and sorted(threads.values()) == sorted(["critical path", *{x.node for x in ray_records}])
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert all(e["ts"] >= 0 and e["dur"] >= 0 and (e["pid"], e["tid"]) in threads for e in slices)
    calls = [e for e in slices if e["cat"] != "critical"]
    assert all(threads[e["pid"], e["tid"]] == e["args"]["node"] for e in calls)
    for number in (1, 2):
        of_round = [e for e in calls if e["args"]["round"] == number]
        assert sum(e["name"] == "logits" for e in of_round) == sum(e["name"] == "learn" for e in of_round) == 12
        assert sorted(e["args"]["node"] for e in of_round if e["name"] == "evaluate") == sorted(
            x.node for x in ray_records if x.round == number)
    copies = [e for e in slices if e["cat"] == "critical"]
    assert len(copies) == sum(e["args"]["critical"] for e in calls) > 0
    assert sum(e["dur"] for e in copies) / 1e6 == pytest.approx(2 * r["critical_path_s"], rel=1e-4)
