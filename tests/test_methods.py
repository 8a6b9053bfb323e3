"""Training methods as plug-ins (rayagg/methods/): their round steps (pure), what crosses
the wire (rayagg/core/wire.py), weight averaging (rayagg/learning/averaging.py), and the
baselines run end to end by the in-process driver, including stop and resume."""
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from rayagg.config import MethodConfig
from rayagg.core import wire
from rayagg.core.schedule import ADOPT, AVERAGE, EVALUATE, LEARN, LOGITS, SAVE, SHARE, TRAIN, round_steps
from rayagg.core.tree import Tree
from rayagg.driver import LocalRunner
from rayagg.errors import ConfigError, TrainingError
from rayagg.learning import averaging
from rayagg.learning.plan import make_plan, payloads
from rayagg.loop import execute
from rayagg.methods import FedAgg, HierFAVG, LocalOnly, Payloads, method_for
from rayagg.observe import RunObserver
from rayagg.rundir.metrics import read_metrics
from rayagg.rundir.resume import load_for_resume
from rayagg.stopping import Stopped, StopSignals

TREE = Tree.balanced(["cloud", "edge", "device"], [1, 2, 4])  # edge-0: device-0, 1; edge-1: 2, 3


def hierfavg(kappa2=2):
    return HierFAVG(MethodConfig(name="hierfavg", kappa2=kappa2))


# ------------------------------------------------------------------ the steps


def test_fedagg_lists_exactly_the_pairs_it_always_did():
    dead, live = {"device-3"}, [n for n in TREE.nodes if n != "device-3"]
    method = method_for(MethodConfig())
    assert isinstance(method, FedAgg) and method.carries_bridge_samples and not method.shares_weights
    assert method.round_steps(TREE, TREE.leaves, dead, live, save=True) == \
        round_steps(TREE, TREE.leaves, dead, scored=live, save=True)


def test_hierfavg_trains_averages_up_and_sends_the_cloud_model_down():
    steps = hierfavg(kappa2=2).round_steps(TREE, TREE.leaves, (), TREE.nodes, save=True)
    assert [s.call for s in steps].count(TRAIN) == 2 * 4  # kappa2 local phases of every device
    for index, step in enumerate(steps):
        assert all(i < index for i in step.inputs)
        if step.call == AVERAGE:  # a parent averages what its children shared, and nothing else
            senders = {steps[i].node for i in step.inputs}
            assert {steps[i].call for i in step.inputs} == {SHARE} and senders == set(TREE.children(step.node))
        if step.call == ADOPT:  # a child adopts its parent's weights
            (source,) = step.inputs
            assert steps[source].call == SHARE and steps[source].node == TREE.parent_of[step.node]
    averages = [s.node for s in steps if s.call == AVERAGE]
    assert averages == ["edge-0", "edge-1", "edge-0", "edge-1", "cloud-0"]  # kappa2 edge rounds, one cloud
    # After the cloud's average every other node adopts once, parents before their children.
    last = max(i for i, s in enumerate(steps) if s.call == AVERAGE)
    adopted = [s.node for s in steps[last:] if s.call == ADOPT]
    assert sorted(adopted) == sorted(n for n in TREE.nodes if n != "cloud-0")
    assert adopted.index("edge-0") < adopted.index("device-0")
    assert [s.call for s in steps[-2 * 7:]] == [EVALUATE, SAVE] * 7


def test_hierfavg_leaves_out_a_subtree_cut_off_by_a_dead_edge_and_a_dead_device():
    dead = {"edge-0", "device-3"}
    live = [n for n in TREE.nodes if n not in dead]
    steps = hierfavg(kappa2=1).round_steps(TREE, TREE.leaves, dead, live, save=False)
    trained = {s.node for s in steps if s.call == TRAIN}
    assert trained == {"device-2"}  # device-0 and 1 wait for re-parenting; device-3 is dead
    (cloud,) = [s for s in steps if s.call == AVERAGE and s.node == "cloud-0"]
    assert [steps[i].node for i in cloud.inputs] == ["edge-1"]
    assert {s.node for s in steps if s.call == EVALUATE} == set(live)  # every live node is scored


def test_local_trains_only_the_devices_and_scores_only_them():
    method = LocalOnly(MethodConfig(name="local"))
    steps = method.round_steps(TREE, TREE.leaves, (), TREE.nodes, save=True)
    assert [s.node for s in steps if s.call == TRAIN] == TREE.leaves("cloud-0")
    assert all(not s.inputs for s in steps)
    assert {s.node for s in steps if s.call == EVALUATE} == set(TREE.leaves("cloud-0"))
    assert {s.node for s in steps if s.call == SAVE} == set(TREE.nodes)  # every node is in the cut
    assert not method.carries_bridge_samples


# ------------------------------------------------------------------ the wire


def test_fedagg_pairs_send_logits_both_ways_over_each_link():
    tree = Tree.balanced(["cloud", "edge", "device"], [1, 1, 2])
    steps = round_steps(tree, tree.leaves, scored=tree.nodes)
    sizes = Payloads(num_classes=10, samples_of_leaf={"device-0": 10, "device-1": 30})
    moved = wire.step_bytes(steps, tree.parent_of, sizes.answer_bytes)
    assert moved == {"edge-0": wire.Link(up=4 * 10 * 40, down=4 * 10 * 40),
                     "device-0": wire.Link(up=4 * 10 * 10, down=4 * 10 * 10),
                     "device-1": wire.Link(up=4 * 10 * 30, down=4 * 10 * 30)}


def test_hierfavg_sends_each_model_once_per_share_taken():
    steps = hierfavg(kappa2=3).round_steps(TREE, TREE.leaves, (), TREE.nodes, save=False)
    sizes = Payloads(10, {}, weights_of_tier={"cloud": 1000, "edge": 1000, "device": 1000})
    moved = wire.step_bytes(steps, TREE.parent_of, sizes.answer_bytes)
    assert moved["device-0"] == wire.Link(up=3 * 1000, down=3 * 1000)  # up after each phase, down after each
    assert moved["edge-1"] == wire.Link(up=1000, down=1000)  # one cloud aggregation a round
    assert "cloud-0" not in moved  # the root has no parent link


def test_bridge_samples_count_on_every_link_they_cross_once():
    per_leaf = {"device-0": 100, "device-1": 200, "device-2": 300, "device-3": 400}
    received = {"edge-0": ["device-0", "device-1"], "cloud-0": ["device-0", "device-1", "device-2"]}
    sent = wire.bridge_bytes(received, TREE.parent_of, per_leaf.__getitem__)
    assert sent == {"device-0": wire.Link(up=100), "device-1": wire.Link(up=200),
                    "edge-0": wire.Link(up=300), "edge-1": wire.Link(up=300)}
    # a device re-parented to edge-1: only edge-1 receives it, the cloud holds it already
    moved = Tree.balanced(["cloud", "edge", "device"], [1, 2, 4]).with_parent("device-0", "edge-1")
    assert wire.bridge_bytes({"edge-1": ["device-0"]}, moved.parent_of, per_leaf.__getitem__) == \
        {"device-0": wire.Link(up=100)}


# ------------------------------------------------------------------ averaging


def test_the_average_weighs_by_samples_and_keeps_the_largest_counter():
    a = averaging.Weights({"w": np.array([0.0, 4.0], np.float32), "n": np.array(3)}, samples=1)
    b = averaging.Weights({"w": np.array([4.0, 0.0], np.float32), "n": np.array(5)}, samples=3)
    merged = averaging.average([a, b])
    assert merged.samples == 4 and merged.state["w"].dtype == np.float32
    np.testing.assert_allclose(merged.state["w"], [3.0, 1.0])
    assert merged.state["n"] == 5
    with pytest.raises(ValueError, match="different models"):
        averaging.average([a, averaging.Weights({"v": np.zeros(2, np.float32), "n": np.array(1)}, 1)])
    with pytest.raises(ValueError, match="0 samples"):
        averaging.average([averaging.Weights(a.state, 0)])


def test_weights_load_back_into_a_model_exactly():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    weights = averaging.weights_of(model, samples=7)
    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    averaging.load_weights(other, weights)
    for mine, theirs in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(mine, theirs)
    assert weights.nbytes == sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_local_epochs_learn_and_refuse_a_diverged_loss():
    torch.manual_seed(0)
    images, labels = torch.randn(40, 5), torch.randint(0, 2, (40,))
    images[labels == 1] += 2.0
    model = torch.nn.Linear(5, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = averaging.local_epochs(model, optimizer, images, labels, epochs=1, batch_size=8,
                                   generator=torch.Generator().manual_seed(0))
    later = averaging.local_epochs(model, optimizer, images, labels, epochs=5, batch_size=8,
                                   generator=torch.Generator().manual_seed(0))
    assert later < first
    images[0] = float("nan")
    with pytest.raises(TrainingError, match="diverged"):
        averaging.local_epochs(model, optimizer, images, labels, epochs=1, batch_size=8,
                               generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ config


def test_hierfavg_needs_one_model_at_every_tier_and_kappas_of_at_least_one(tiny_config):
    with pytest.raises(ConfigError, match="cloud resnet10, edge cnn, device cnn"):
        tiny_config.with_changes(method={"name": "hierfavg"})
    with pytest.raises(ConfigError, match=r"method\.kappa2: Input should be greater than or equal to 1"):
        tiny_config.with_changes(method={"name": "local", "kappa2": 0})
    with pytest.raises(ConfigError, match=r"method\.name: Input should be 'fedagg', 'hierfavg' or 'local'"):
        tiny_config.with_changes(method={"name": "fedavg"})


def test_check_refuses_a_bad_method_before_anything_starts(tmp_path, tiny_config):
    path = tmp_path / "bad.yaml"
    path.write_text(tiny_config.to_yaml().replace("name: fedagg", "name: hierfavg"))
    done = subprocess.run([sys.executable, "-m", "rayagg", "check", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "every tier needs the same model" in done.stderr and "cloud resnet10" in done.stderr


# ------------------------------------------------------------------ end to end, in process


@pytest.fixture(scope="module")
def hierfavg_plan(quick_config, tiny_dataset):
    return make_plan(quick_config.with_changes(method={"name": "hierfavg", "kappa2": 2}), tiny_dataset)


def measured(records):
    return sorted((r.round, r.node, r.accuracy, r.loss, r.bytes_up, r.bytes_down) for r in records)


@pytest.fixture(scope="module")
def hierfavg_run(hierfavg_plan, tiny_dataset, tmp_path_factory):
    runner = LocalRunner(hierfavg_plan, tiny_dataset)
    out = tmp_path_factory.mktemp("hierfavg")
    records = execute(runner, out)
    return records, out


def test_hierfavg_ends_every_round_with_one_model_on_every_node(hierfavg_plan, hierfavg_run):
    records, out = hierfavg_run
    for round_index in (1, 2, 3):
        scores = {(r.accuracy, r.loss) for r in records if r.round == round_index}
        assert len(scores) == 1  # cloud, edges and devices hold the cloud's average
    loss = {r.round: r.loss for r in records if r.node == "cloud-0"}
    assert loss[3] < loss[2] < loss[1]  # it learns
    size = payloads(hierfavg_plan).weights_of_tier["device"]
    device = next(r for r in records if r.node == "device-0" and r.round == 1)
    assert (device.bytes_up, device.bytes_down) == (2 * size, 2 * size)  # kappa2 = 2
    assert not (out / "bridge").exists()  # no bridge samples: nothing encoded, nothing stored


def test_local_moves_nothing_and_scores_the_devices(quick_config, tiny_dataset, tmp_path):
    plan = make_plan(quick_config.with_changes(method={"name": "local"}, training={"rounds": 2}), tiny_dataset)
    records = execute(LocalRunner(plan, tiny_dataset), tmp_path)
    assert {r.tier for r in records} == {"device"}
    assert all(r.bytes_up == r.bytes_down == 0 for r in records)
    assert (tmp_path / "accuracy.png").is_file()


def test_fedagg_counts_the_bridge_samples_once_then_only_logits(quick_config, tiny_dataset, tmp_path):
    plan = make_plan(quick_config.with_changes(training={"rounds": 2}), tiny_dataset)
    records = execute(LocalRunner(plan, tiny_dataset), tmp_path)
    leaf = next(r for r in records if r.node == "device-0" and r.round == 1)
    samples = plan.shard_sizes["device-0"]
    logits = 4 * plan.num_classes * samples
    assert leaf.bytes_down == logits
    assert leaf.bytes_up == logits + samples * wire.bridge_sample_bytes(plan.image_shape)
    assert next(r for r in records if r.node == "device-0" and r.round == 2).bytes_up == logits


class StopOnRootAverage(RunObserver):
    """Requests a stop when the root averages in ``round_index`` (mid-round)."""

    def __init__(self, stop, round_index, times=1):
        self.stop, self.round_index, self.times = stop, round_index, times

    def step_finished(self, round_index, node, call, value):
        if round_index == self.round_index and node == "cloud-0" and call == AVERAGE:
            for _ in range(self.times):
                self.stop.request(signal.SIGTERM if self.times == 1 else signal.SIGINT)


@pytest.mark.parametrize("times", [1, 2], ids=["finish the round", "abandon it"])
def test_hierfavg_stop_then_resume_equals_the_uninterrupted_run(hierfavg_plan, hierfavg_run, tiny_dataset,
                                                                tmp_path, times):
    stop = StopSignals(echo=lambda line: None)
    with pytest.raises(Stopped):
        execute(LocalRunner(hierfavg_plan, tiny_dataset), tmp_path, stop=stop,
                observers=[StopOnRootAverage(stop, 2, times)])
    state = load_for_resume(tmp_path, hierfavg_plan)
    assert state.round == (2 if times == 1 else 0)  # checkpoint_every 2: an abandoned round 2 falls back to 0
    execute(LocalRunner(hierfavg_plan, tiny_dataset), tmp_path, resume=state)
    assert measured(read_metrics(tmp_path / "metrics.parquet")) == measured(hierfavg_run[0])
