"""HierFAVG on a real local Ray: an edge killed mid-round, and a stop then a resume.

The baselines get the runtime's features unchanged: a dead edge's devices are re-parented
and averaged by their new edge, and a stopped run resumes to exactly the metrics of the
uninterrupted one. The methods' steps and the in-process runs: tests/test_methods.py.
"""
import pytest
from conftest import packed
from test_failures import FaultsInRounds
from test_methods import StopOnRootAverage

from rayagg.learning.plan import make_plan, payloads
from rayagg.loop import execute
from rayagg.rundir.events import read_events
from rayagg.rundir.metrics import read_metrics
from rayagg.rundir.resume import load_for_resume
from rayagg.runtime.runner import RayRunner
from rayagg.stopping import Stopped, StopSignals

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def plan(quick_config, tiny_dataset):
    """quick_config's tree (the CNN at every tier) under hierfavg, one round in flight (the
    fault hook needs it), the four devices on one host: 4 processes."""
    config = packed(quick_config, device=4).with_changes(
        method={"name": "hierfavg", "kappa2": 2}, runtime={"rounds_in_flight": 1},
        supervision={"checkpoint_every": 1})
    return make_plan(config, tiny_dataset)


def measured(records):
    return sorted((r.round, r.node, r.accuracy, r.loss, r.bytes_up, r.bytes_down) for r in records)


def test_hierfavg_edge_killed_mid_round_its_devices_are_averaged_by_their_new_edge(ray_session, plan, tmp_path):
    faults = FaultsInRounds(("edge-0", 2, "kill"))
    faults.runner = runner = RayRunner(plan, faults=faults.fault)
    records = execute(runner, tmp_path)
    assert "edge-0" in faults.at
    assert sorted({r.round for r in records}) == [1, 2, 3]
    assert sorted(r.round for r in records if r.node == "edge-0") == [1]
    events = read_events(tmp_path / "events.parquet")
    assert sorted(e.node for e in events if e.kind == "reparent") == ["device-0", "device-1"]
    assert [e.kind for e in events if e.kind == "retry"] == ["retry"]
    last = {r.node: r for r in records if r.round == 3}
    assert last["device-0"].parent == last["device-1"].parent == "edge-1"
    assert last["edge-1"].children == 4
    # edge-1 averaged all four devices twice (kappa2) and every node ended with the cloud's model
    size = payloads(plan).weights_of_tier["device"]
    assert all((last[d].bytes_up, last[d].bytes_down) == (2 * size, 2 * size) for d in
               ("device-0", "device-1", "device-2", "device-3"))
    assert len({(r.accuracy, r.loss) for r in last.values()}) == 1


def test_hierfavg_stop_mid_round_then_resume_equals_the_uninterrupted_run(ray_session, plan, tmp_path_factory):
    whole = tmp_path_factory.mktemp("whole")
    uninterrupted = measured(execute(RayRunner(plan), whole))
    out = tmp_path_factory.mktemp("stopped")
    stop = StopSignals(echo=lambda line: None)
    with pytest.raises(Stopped):
        execute(RayRunner(plan), out, stop=stop, observers=[StopOnRootAverage(stop, 2)])
    state = load_for_resume(out, plan)
    assert state.round == 2  # the round in flight finished and was checkpointed
    execute(RayRunner(plan), out, resume=state)
    assert measured(read_metrics(out / "metrics.parquet")) == uninterrupted
