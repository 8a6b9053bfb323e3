"""Experiment tracking (rayagg/tracking/): what TensorBoard and MLflow hold, read back with
their own readers and checked against metrics.parquet; a resumed run's steps once each;
a tracker that cannot start costs a warning, never the run; compare's parent run.

In-process runs of the quick tree (well under a second a round); no Ray."""
import json
import socket

import pytest

from rayagg.config import parse_config
from rayagg.driver import LocalRunner
from rayagg.files import sha256_bytes
from rayagg.learning.plan import make_plan
from rayagg.loop import execute
from rayagg.observe import RunObserver
from rayagg.rundir.manifest import STATE_FILE, TRACKING_FILE
from rayagg.rundir.metrics import NodeMetrics, read_metrics
from rayagg.rundir.resume import check_resumable_config, load_for_resume
from rayagg.tracking import Guarded, trackers
from rayagg.tracking.scalars import flat_params, round_scalars

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

ROOT_ACCURACY = "tier/cloud/accuracy"


@pytest.fixture(scope="module")
def tracked_plan(quick_config, tiny_dataset):
    config = quick_config.with_changes(tracking={"tensorboard": True, "mlflow": True})
    return make_plan(config, tiny_dataset)


def tensorboard_scalars(log_dir, tag):
    """(step, value) of ``tag`` as TensorBoard shows it (its reader drops purged steps)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def mlflow_client(runs_dir):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")


def only_run(client, experiment="tiny"):
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(found) == 1, [run.info.run_name for run in found]
    return found[0]


def root_accuracy(records):
    return [(r.round, r.accuracy) for r in sorted(records, key=lambda r: r.round) if r.tier == "cloud"]


def test_tensorboard_and_mlflow_hold_what_metrics_parquet_holds(tracked_plan, tiny_dataset, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "one"
    execute(LocalRunner(tracked_plan, tiny_dataset), run_dir)
    said = capsys.readouterr().out
    assert f"rayagg: tracking: TensorBoard event files in {run_dir / 'tensorboard'}" in said
    assert f"rayagg: tracking: MLflow run " in said and f"sqlite:///{run_dir.parent / 'mlflow.db'}" in said
    records = read_metrics(run_dir / "metrics.parquet")
    expected = root_accuracy(records)
    assert [step for step, _ in expected] == [1, 2, 3]

    board = tensorboard_scalars(run_dir / "tensorboard", ROOT_ACCURACY)
    assert [step for step, _ in board] == [1, 2, 3]
    assert [value for _, value in board] == pytest.approx([value for _, value in expected], abs=1e-6)
    seconds = tensorboard_scalars(run_dir / "tensorboard", "round/seconds")
    assert [value for _, value in seconds] == pytest.approx(
        [next(r.round_s for r in records if r.round == n) for n in (1, 2, 3)], rel=1e-6)

    client = mlflow_client(run_dir.parent)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, ROOT_ACCURACY)]
    assert history == expected  # MLflow keeps doubles: exact
    assert run.data.params["training.rounds"] == "3"
    assert run.data.params["tree.tiers.0.name"] == "cloud"
    digest = sha256_bytes((run_dir / STATE_FILE).read_bytes())
    assert run.data.tags["checkpoint.round-3.sha256"] == digest
    assert "checkpoint.round-2.sha256" in run.data.tags and "checkpoint.round-0.sha256" in run.data.tags
    assert run.data.tags["mlflow.source.git.commit"]
    artifacts = {entry.path for entry in client.list_artifacts(run.info.run_id)}
    assert {"accuracy.png", "state.json", "config.yaml"} <= artifacts
    assert json.loads((run_dir / TRACKING_FILE).read_text())["run_id"] == run.info.run_id


class CrashAfter(RunObserver):
    """Fails the run once round ``number``'s metrics (and its tracked values) are written,
    before its checkpoint: a driver that died between checkpoints."""

    def __init__(self, number):
        self.number = number

    def round_collected(self, result, records):
        if result.round == self.number:
            raise RuntimeError("the driver died")


def test_a_resumed_run_continues_the_same_tracked_run_without_repeating_a_step(tracked_plan, tiny_dataset,
                                                                               tmp_path):
    run_dir = tmp_path / "runs" / "crashed"
    with pytest.raises(RuntimeError, match="driver died"):
        execute(LocalRunner(tracked_plan, tiny_dataset), run_dir, observers=[CrashAfter(3)])
    state = load_for_resume(run_dir, tracked_plan)
    assert state.round == 2  # checkpoint_every 2: round 3 was tracked, then lost
    client = mlflow_client(run_dir.parent)
    assert only_run(client).info.status == "FAILED"

    execute(LocalRunner(tracked_plan, tiny_dataset), run_dir, resume=state)
    expected = root_accuracy(read_metrics(run_dir / "metrics.parquet"))
    run = only_run(client)  # the same MLflow run, not a second one
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, ROOT_ACCURACY)]
    assert steps == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "round/seconds")] == [1, 2, 3]
    board = tensorboard_scalars(run_dir / "tensorboard", ROOT_ACCURACY)
    assert [step for step, _ in board] == [1, 2, 3]
    assert [value for _, value in board] == pytest.approx([value for _, value in expected], abs=1e-6)


def test_a_tracker_that_cannot_start_is_a_warning_and_the_run_completes(quick_config, tiny_dataset, tmp_path,
                                                                         monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = quick_config.with_changes(tracking={"mlflow": {"tracking_uri": f"http://127.0.0.1:{port}"},
                                                 "tensorboard": True})
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)  # not installed
    warnings = []
    plan = make_plan(config, tiny_dataset)
    observers = trackers(config, tmp_path, warn=warnings.append)
    # the loop adds the config's own trackers too; these, with a recorder, show the warnings
    records = execute(LocalRunner(plan, tiny_dataset), tmp_path, observers=observers)
    assert sorted(r.round for r in records if r.tier == "cloud") == [1, 2, 3]
    assert len(read_metrics(tmp_path / "metrics.parquet")) == len(records)
    assert len(warnings) == 2, warnings
    mlflow, board = sorted(warnings)
    assert board.startswith("tracking: TensorBoard could not start: ModuleNotFoundError") and "rayagg[tracking]" in board
    assert mlflow.startswith("tracking: MLflow could not start:") and "the run goes on" in mlflow
    assert all(isinstance(o, Guarded) and o.failed is not None for o in observers)


def test_compare_groups_its_runs_under_one_parent_run(quick_config, tmp_path):
    from rayagg.tools import compare

    config = quick_config.with_changes(training={"rounds": 1}, tracking={"mlflow": True})
    out = tmp_path / "compare"
    runs = compare.plan_runs(config, ["fedagg", "local"], [0], out)
    compare.run_all(runs, local=True, echo=lambda line: None)
    client = mlflow_client(out)
    found = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [run for run in found if "mlflow.parentRunId" not in run.data.tags]
    assert [run.info.run_name for run in parents] == ["compare"]
    children = sorted(run.info.run_name for run in found if
                      run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id)
    assert children == ["fedagg-seed0", "local-seed0"]
    assert parents[0].info.status == "FINISHED"


def record(node, tier, accuracy, seconds, round_index=1, **rest):
    return NodeMetrics(round_index, node, tier, accuracy, 1 - accuracy, seconds, 10.0, **rest)


def test_round_scalars_name_tiers_nodes_above_the_leaves_and_the_round():
    rows = [record("cloud-0", "cloud", 0.8, 4.0, children=2), record("edge-0", "edge", 0.6, 3.0),
            record("edge-1", "edge", 0.4, 1.0), record("device-0", "device", 0.5, 1.0, bytes_up=10, bytes_down=4),
            record("device-1", "device", 0.3, 2.0, bytes_up=6)]
    values = round_scalars(rows, ["cloud", "edge", "device"])
    assert values["tier/edge/accuracy"] == pytest.approx(0.5)
    assert values["tier/device/nodes"] == 2 and values["tier/device/busy_max_seconds"] == 2.0
    assert values["node/cloud-0/children"] == 2 and values["node/edge-1/accuracy"] == 0.4
    assert not any(name.startswith("node/device") for name in values)
    assert values["round/imbalance"] == pytest.approx(3.0 / 2.0)
    assert (values["round/bytes_up"], values["round/bytes_down"], values["round/seconds"]) == (16, 4, 10.0)
    with pytest.raises(ValueError, match="exactly one round"):
        round_scalars(rows + [record("cloud-0", "cloud", 0.9, 1.0, round_index=2)], ["cloud", "edge", "device"])


def test_check_names_the_trackers_and_any_package_missing(quick_config, monkeypatch):
    import importlib.util

    from rayagg.tracking import describe

    assert describe(quick_config) is None
    config = quick_config.with_changes(tracking={"tensorboard": {"log_dir": "/tb"}, "mlflow": True})
    assert describe(config) == ("TensorBoard (event files in /tb); MLflow (experiment tiny, store "
                                "$MLFLOW_TRACKING_URI, else sqlite:///<RUN_DIR's parent>/mlflow.db)")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert describe(config).endswith("; not installed: mlflow (pip install 'rayagg[tracking]')")


def test_flat_params_and_the_tracking_section():
    assert flat_params({"a": {"b": [1, {"c": None}]}, "d": {}, "e": "x"}) == {
        "a.b.0": "1", "a.b.1.c": "null", "d": "{}", "e": "x"}
    base = {"tree": {"tiers": [{"name": "cloud", "count": 1, "model": "cnn"},
                              {"name": "device", "count": 2, "model": "cnn"}]}}
    on = parse_config({**base, "tracking": {"tensorboard": True, "mlflow": {"experiment": "x"}}})
    assert on.tracking.tensorboard.log_dir is None and on.tracking.mlflow.experiment == "x"
    off = parse_config({**base, "tracking": {"tensorboard": False}})
    assert not off.tracking.enabled
    check_resumable_config(off, on)  # a resume may start or stop tracking
    with pytest.raises(Exception, match="tracking.mlflow.uri: unknown key"):
        parse_config({**base, "tracking": {"mlflow": {"uri": "x"}}})
