"""Stopping and resuming with the in-process driver: a stop at any point, then a resume,
gives exactly the metrics of the uninterrupted run; checkpoints are consistent cuts.

The Ray runtime shares this loop (rayagg/run.py); tests/test_ray_runtime.py stops a
real Ray run with a real SIGTERM mid-round and checks the same equality there.
"""
import signal

import pytest

from rayagg import rundir
from rayagg.driver import LocalRunner
from rayagg.metrics import read_metrics
from rayagg.plan import make_plan
from rayagg.run import StopSignals, Stopped, execute
from rayagg.rundir import RunState

ROUNDS = 3  # quick_config's


@pytest.fixture(scope="module")
def quick_plan(quick_config, tiny_dataset):
    return make_plan(quick_config, tiny_dataset)


def measured(records):
    """What must match exactly: every node's accuracy and loss per round."""
    return sorted((r.round, r.node, r.accuracy, r.loss) for r in records)


@pytest.fixture(scope="module")
def uninterrupted_run(quick_plan, tiny_dataset, tmp_path_factory):
    """The run every stopped one is compared with: (its run directory, what it measured)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, measured(execute(LocalRunner(quick_plan, tiny_dataset), out, echo=lambda line: None))


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    return uninterrupted_run[1]


class Interrupted(LocalRunner):
    """Calls ``trigger(stop)`` at one point of a run: 'start' (end of start-up), 'learn'
    (inside the root's ``learn_call``-th learn: mid-round) or 'checkpoint' (after the node
    files of round ``at_round`` are written, before the manifest commits them)."""

    def __init__(self, plan, dataset, stop, point, trigger, learn_call=0, at_round=0):
        super().__init__(plan, dataset)
        self.stop, self.point, self.trigger = stop, point, trigger
        self.learn_call, self.at_round = learn_call, at_round

    def start(self, run_dir=None, resume=None):
        super().start(run_dir, resume)
        if self.point == "start":
            self.trigger(self.stop)
        if self.point == "learn":
            root = self.nodes[self.tree.root]
            learn, calls = root.learn, []

            def learn_then_trigger(leaves, teacher):
                loss = learn(leaves, teacher)
                calls.append(1)
                if len(calls) == self.learn_call:
                    self.trigger(self.stop)
                return loss

            root.learn = learn_then_trigger

    def save_checkpoints(self, directory):
        digests = super().save_checkpoints(directory)
        if self.point == "checkpoint" and self.round_index == self.at_round:
            self.trigger(self.stop)
        return digests


def once(stop):
    stop.request(signal.SIGTERM)


def twice(stop):
    stop.request(signal.SIGINT)
    stop.request(signal.SIGINT)  # the second request raises Stopped at once


# (point, trigger, learn call or round, abandoned, checkpoint a resume continues after)
CASES = {
    "while starting": ("start", once, 0, False, 0),
    "mid-round 1": ("learn", once, 1, False, 1),  # round 1 finishes and is checkpointed
    "between rounds": ("echo", once, 1, False, 1),  # after round 1's line, before round 2
    "during a checkpoint": ("checkpoint", once, 2, False, 2),
    "twice mid-round 2": ("learn", twice, 3, True, 0),  # round 1 was never checkpointed
    "twice during a checkpoint": ("checkpoint", twice, 2, True, 0),
}


@pytest.mark.parametrize("case", CASES)
def test_stop_then_resume_equals_the_uninterrupted_run(case, quick_plan, tiny_dataset, uninterrupted,
                                                       tmp_path):
    point, trigger, number, abandoned, resumes_after = CASES[case]
    stop = StopSignals(echo=lambda line: None)

    def echo(line):
        if point == "echo" and line.startswith(f"round {number}/"):
            trigger(stop)

    runner = Interrupted(quick_plan, tiny_dataset, stop, point, trigger,
                         learn_call=number, at_round=number)
    with pytest.raises(Stopped) as info:
        execute(runner, tmp_path, echo=echo, stop=stop)
    assert info.value.abandoned is abandoned
    assert info.value.checkpoint_round == resumes_after
    assert info.value.exit_code == 128 + info.value.signum
    state = rundir.load_for_resume(tmp_path, quick_plan)
    assert state.round == resumes_after
    on_disk = {p.name for p in (tmp_path / "checkpoints").glob("round-*")}
    assert ({f"round-{resumes_after:04d}"} if resumes_after else set()) <= on_disk
    records = execute(LocalRunner(quick_plan, tiny_dataset), tmp_path, echo=lambda line: None,
                      resume=state)
    assert measured(records) == uninterrupted
    assert measured(read_metrics(tmp_path / "metrics.parquet")) == uninterrupted
    assert RunState.load(tmp_path).round == ROUNDS
    # older cuts, and a cut abandoned half-written, are pruned once a newer one commits
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("round-*")) == [f"round-{ROUNDS:04d}"]


def test_a_checkpoint_holds_every_live_node_and_the_manifest_verifies_them(quick_plan,
                                                                           uninterrupted_run):
    out, _ = uninterrupted_run
    state = RunState.load(out)
    assert state.round == ROUNDS and set(state.checkpoints) == set(quick_plan.tree.nodes)
    for node in quick_plan.tree.nodes:
        path, digest = state.located(node, out)
        assert path.parent.name == f"round-{ROUNDS:04d}" and len(digest) == 64


def test_a_new_run_never_writes_over_a_run(quick_plan, tiny_dataset, tmp_path):
    (tmp_path / "config.yaml").write_text("name: earlier\n")
    with pytest.raises(rundir.RunDirError, match="already holds a run"):
        execute(LocalRunner(quick_plan, tiny_dataset), tmp_path, echo=lambda line: None)
    assert (tmp_path / "config.yaml").read_text() == "name: earlier\n"


def test_stop_signals_route_real_signals_to_requests():
    stop, lines = StopSignals(echo=lambda line: lines.append(line)), []
    previous = signal.getsignal(signal.SIGTERM)
    with stop.handling_signals():
        signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and "stopping after the rounds in flight" in lines[0]
        with pytest.raises(Stopped) as info:
            signal.raise_signal(signal.SIGINT)
        assert info.value.abandoned and info.value.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is previous
