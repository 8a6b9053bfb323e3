"""Stopping and resuming with the in-process driver: a stop at any point, then a resume,
gives exactly the metrics of the uninterrupted run; checkpoints are consistent cuts.

The Ray runtime shares this loop (rayagg/loop.py); tests/test_ray_runtime.py stops a
real Ray run with a real SIGTERM mid-round and checks the same equality there.
"""
import signal

import pytest

from rayagg.core.schedule import LEARN, SAVE
from rayagg.driver import LocalRunner
from rayagg.errors import RunDirError
from rayagg.learning.plan import make_plan
from rayagg.loop import execute
from rayagg.observe import RunObserver
from rayagg.rundir.manifest import RunState
from rayagg.rundir.metrics import read_metrics
from rayagg.rundir.resume import load_for_resume
from rayagg.stopping import StopSignals, Stopped

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
    return out, measured(execute(LocalRunner(quick_plan, tiny_dataset), out))


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    return uninterrupted_run[1]


class StopAt(RunObserver):
    """Calls ``trigger(stop)`` at one point of a run: 'start' (the tree is up), 'learn'
    (when the root's ``number``-th learn finished: mid-round), 'echo' (round ``number`` is
    collected: its line is printed, its checkpoint not yet committed) or 'checkpoint'
    (after the node files of round ``number`` are written, before the manifest commits
    them)."""

    def __init__(self, plan, stop, point, trigger, number):
        self.stop, self.point, self.trigger, self.number = stop, point, trigger, number
        self.root, self.last_node, self.learns = plan.tree.root, plan.tree.nodes[-1], 0

    def run_started(self, run):
        if self.point == "start":
            self.trigger(self.stop)

    def step_finished(self, round_index, node, call, value):
        if self.point == "learn" and node == self.root and call == LEARN:
            self.learns += 1
            if self.learns == self.number:
                self.trigger(self.stop)
        if self.point == "checkpoint" and round_index == self.number and call == SAVE and node == self.last_node:
            self.trigger(self.stop)

    def round_collected(self, result, records):
        if self.point == "echo" and result.round == self.number:
            self.trigger(self.stop)


def once(stop):
    stop.request(signal.SIGTERM)


def twice(stop):
    stop.request(signal.SIGINT)
    stop.request(signal.SIGINT)  # the second request raises Stopped at once


def twice_inside_a_c_call(stop):
    """A second SIGINT landing in a Ray wait: CPython hands the handler's Stopped back as
    the context of a SystemError ("<cyfunction CoreWorker.wait> returned a result with an
    exception set"), seen once in a few tries with real signals."""
    stop.request(signal.SIGINT)
    try:
        stop.request(signal.SIGINT)
    except Stopped:
        raise SystemError("<cyfunction CoreWorker.wait> returned a result with an exception set")


# (point, trigger, learn call or round, abandoned, checkpoint a resume continues after)
CASES = {
    "while starting": ("start", once, 0, False, 0),
    "mid-round 1": ("learn", once, 1, False, 1),  # round 1 finishes and is checkpointed
    "between rounds": ("echo", once, 1, False, 1),  # after round 1's line, before round 2
    "during a checkpoint": ("checkpoint", once, 2, False, 2),
    "twice mid-round 2": ("learn", twice, 3, True, 0),  # round 1 was never checkpointed
    "twice during a checkpoint": ("checkpoint", twice, 2, True, 0),
    "twice inside a C call": ("learn", twice_inside_a_c_call, 3, True, 0),
}


@pytest.mark.parametrize("case", CASES)
def test_stop_then_resume_equals_the_uninterrupted_run(case, quick_plan, tiny_dataset, uninterrupted,
                                                       tmp_path):
    point, trigger, number, abandoned, resumes_after = CASES[case]
    stop = StopSignals(echo=lambda line: None)
    with pytest.raises(Stopped) as info:
        execute(LocalRunner(quick_plan, tiny_dataset), tmp_path, stop=stop,
                observers=[StopAt(quick_plan, stop, point, trigger, number)])
    assert info.value.abandoned is abandoned
    assert info.value.checkpoint_round == resumes_after
    assert info.value.exit_code == 128 + info.value.signum
    state = load_for_resume(tmp_path, quick_plan)
    assert state.round == resumes_after
    on_disk = {p.name for p in (tmp_path / "checkpoints").glob("round-*")}
    assert ({f"round-{resumes_after:04d}"} if resumes_after else set()) <= on_disk
    records = execute(LocalRunner(quick_plan, tiny_dataset), tmp_path, resume=state)
    assert measured(records) == uninterrupted
    assert measured(read_metrics(tmp_path / "metrics.parquet")) == uninterrupted
    assert RunState.load(tmp_path).round == ROUNDS
    # older cuts, and a cut abandoned half-written, are pruned once a newer one commits
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("round-*")) == [f"round-{ROUNDS:04d}"]


class TwoInFlight(LocalRunner):
    """The in-process driver holding two rounds uncollected, as Ray does by default: each
    round still runs whole when submitted, so round r + 1 has trained (and written its
    node files, when due) by the time round r is collected."""

    max_rounds_in_flight = 2


# checkpoint_every -> (rounds abandoned, the round a resume continues after) for a stop
# asked for as round 1 is collected, with round 2 in flight
PROMPT_STOPS = {1: ([2], 1), 2: ([], 2)}


@pytest.mark.parametrize("every", PROMPT_STOPS)
def test_a_first_stop_abandons_the_rounds_in_flight_after_a_checkpointed_one(every, quick_config, tiny_dataset,
                                                                           uninterrupted, tmp_path):
    """Every round checkpointed: the stop commits round 1 and abandons round 2, whose
    node files no cut lists. Round 1 not checkpointed: round 2 finishes and is the cut."""
    plan = make_plan(quick_config.with_changes(supervision={"checkpoint_every": every}), tiny_dataset)
    dropped, resumes_after = PROMPT_STOPS[every]
    stop = StopSignals(echo=lambda line: None)
    with pytest.raises(Stopped) as info:
        execute(TwoInFlight(plan, tiny_dataset), tmp_path, stop=stop,
                observers=[StopAt(plan, stop, "echo", once, 1)])
    assert (info.value.dropped, info.value.checkpoint_round, info.value.abandoned) == (dropped, resumes_after, False)
    assert max(r.round for r in read_metrics(tmp_path / "metrics.parquet")) == resumes_after
    state = load_for_resume(tmp_path, plan)
    assert state.round == resumes_after
    assert measured(execute(LocalRunner(plan, tiny_dataset), tmp_path, resume=state)) == uninterrupted
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
    with pytest.raises(RunDirError, match="already holds a run"):
        execute(LocalRunner(quick_plan, tiny_dataset), tmp_path)
    assert (tmp_path / "config.yaml").read_text() == "name: earlier\n"


def test_stop_signals_route_real_signals_to_requests():
    stop, lines = StopSignals(echo=lambda line: lines.append(line)), []
    previous = signal.getsignal(signal.SIGTERM)
    with stop.handling_signals():
        signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and "stopping after the oldest round in flight" in lines[0]
        with pytest.raises(Stopped) as info:
            signal.raise_signal(signal.SIGINT)
        assert info.value.abandoned and info.value.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is previous
