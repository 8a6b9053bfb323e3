"""Heartbeats under load, as pure data (rayagg/core/beats.py and the probe rule of
rayagg/core/supervision.py): stamps, the supervisor's own stalls, suspects and probes.
Plain float clocks: no Ray, no torch."""
import pytest

from rayagg.core import beats
from rayagg.core.actions import DeclareDead, DropLeaf, FailurePolicy, Reason, describe
from rayagg.core.supervision import (SupervisorState, dead_after_s, decide, heartbeat_ages, heartbeats, report_death,
                                     stalled, suspects, unanswered)
from rayagg.core.tree import Tree
from rayagg.errors import ConfigError

PROBING = FailurePolicy(heartbeat_interval_s=1.0, max_missed=5, probe_timeout_s=10.0)


def watched(policy=PROBING, t=0.0):
    """The 1-2-4 tree, every node heard from at ``t``."""
    tree = Tree.balanced(["cloud", "edge", "device"], [1, 2, 4])
    return heartbeats(SupervisorState.start(tree, t, policy=policy), tree.nodes, t)


def all_but(state, now, *silent):
    return heartbeats(state, [n for n in state.tree.nodes if n not in silent], now)


# ------------------------------------------------------------------ stamps


def test_a_stamp_tells_a_starved_sender_by_its_send_gaps():
    sender = beats.received(None, beats.Stamp("device-host-0", 1, 50.0), 10.0, beats.Stalls())
    sender = beats.received(sender, beats.Stamp("device-host-0", 2, 51.0), 11.0, beats.Stalls())
    # the host's thread slept 4.5 s past its 1 s interval: its own clock says so
    sender = beats.received(sender, beats.Stamp("device-host-0", 3, 56.5), 16.6, beats.Stalls())
    assert sender.max_send_gap_s == pytest.approx(5.5)
    assert sender.max_silence_s == pytest.approx(5.6)
    assert (sender.seq, sender.arrived_at) == (3, 16.6)


def test_the_wait_for_the_first_beats_answer_is_no_send_gap():
    # Beat 0 waited 4 s for the supervisor's answer; the thread's first beat came 1 s later.
    sender = beats.received(None, beats.Stamp("edge-0", 0, 20.0), 4.0, beats.Stalls())
    sender = beats.received(sender, beats.Stamp("edge-0", 1, 25.0), 5.0, beats.Stalls())
    assert sender.max_send_gap_s == 0.0 and sender.max_silence_s == pytest.approx(1.0)


def test_a_starved_supervisor_is_not_a_starved_sender():
    # The host sent every second; the supervisor did not run from 12 to 17, so four beats
    # arrived together at 17: no send gap, and no silence once the stall is discounted.
    stalls = beats.Stalls().add(12.0, 17.0)
    sender = beats.received(None, beats.Stamp("edge-0", 0, 100.0), 11.0, stalls)
    for seq in range(1, 6):
        sender = beats.received(sender, beats.Stamp("edge-0", seq, 100.0 + seq), 17.0, stalls)
    assert sender.max_send_gap_s == pytest.approx(1.0)
    assert sender.max_silence_s == pytest.approx(1.0)


def test_lost_beats_do_not_count_as_a_send_gap_and_old_stamps_change_nothing():
    sender = beats.received(None, beats.Stamp("h", 3, 10.0), 1.0, beats.Stalls())
    sender = beats.received(sender, beats.Stamp("h", 6, 13.0), 4.0, beats.Stalls())  # 4 and 5 lost
    assert sender.max_send_gap_s == pytest.approx(1.0)
    late = beats.received(sender, beats.Stamp("h", 5, 12.0), 4.5, beats.Stalls())
    assert (late.seq, late.sent_at, late.arrived_at) == (6, 13.0, 4.5)


# ------------------------------------------------------------------ the supervisor's stalls


@pytest.mark.parametrize("now, stall", [(10.4, None), (10.6, None), (14.0, (10.5, 14.0))])
def test_own_stall_is_the_span_past_when_it_was_due(now, stall):
    assert beats.own_stall(10.0, now, period_s=0.5, tolerance_s=0.5) == stall


def test_stalls_merge_and_discount_only_their_overlap():
    stalls = beats.Stalls().add(2.0, 4.0).add(3.0, 5.0).add(8.0, 9.0).add(7.0, 7.0)
    assert stalls.spans == ((2.0, 5.0), (8.0, 9.0))
    assert stalls.within(4.0, 8.5) == pytest.approx(1.5)
    assert beats.silence_s(4.0, 10.0, stalls) == pytest.approx(4.0)  # 6 s less 1 + 1 of stall
    assert stalls.after(6.0).spans == ((8.0, 9.0),)
    assert stalls.total_s == pytest.approx(4.0)


def test_a_supervisor_stall_does_not_make_anyone_silent():
    state = watched(policy=FailurePolicy(probe_timeout_s=0))
    state = stalled(state, 1.0, 5.5)  # the supervisor slept through 4.5 s
    assert suspects(state, 6.0) == []
    assert heartbeat_ages(state, 6.0)["edge-0"] == pytest.approx(1.5)
    assert dead_after_s(state, "edge-0", 6.0) == pytest.approx(3.5)
    _, actions = decide(state, 6.0)
    assert actions == []
    state = all_but(state, 9.0, "device-1")
    _, actions = decide(state, 9.6)  # device-1: 9.6 - 4.5 = 5.1 s of silence
    assert [a.node for a in actions if isinstance(a, DeclareDead)] == ["device-1"]


def test_stalls_older_than_every_last_heartbeat_are_forgotten():
    state = stalled(watched(), 1.0, 2.0)
    state = all_but(state, 3.0)
    assert stalled(state, 4.0, 5.0).stalls.spans == ((4.0, 5.0),)


# ------------------------------------------------------------------ the probe rule


def test_silence_makes_a_suspect_not_a_death():
    state = all_but(watched(), 3.0, "device-2")
    assert suspects(state, 5.1) == ["device-2"]
    state, actions = decide(state, 5.1)
    assert actions == [] and state.dead == frozenset()
    assert suspects(state, 60.0) == ["cloud-0", "edge-0", "edge-1", "device-0", "device-1", "device-2", "device-3"]


def test_an_answered_probe_counts_as_a_heartbeat():
    state = all_but(watched(), 4.0, "device-2")
    state = heartbeats(state, ["device-2"], 5.3)  # the probe's answer
    assert suspects(state, 6.0) == []
    assert decide(state, 6.0)[1] == []


def test_an_unanswered_probe_kills_at_the_next_decide():
    state = all_but(watched(), 14.0, "device-2", "device-3")
    state = unanswered(state, ["device-2", "device-3", "device-99"])
    state, actions = decide(state, 15.2)
    assert actions[:2] == [DeclareDead("device-2", Reason.UNANSWERED_PROBE, pytest.approx(15.2)),
                           DeclareDead("device-3", Reason.UNANSWERED_PROBE, pytest.approx(15.2))]
    assert DropLeaf("device-2", Reason.UNANSWERED_PROBE) in actions
    assert state.dead == {"device-2", "device-3"} and state.unanswered == frozenset()
    assert describe(actions[0]) == "device-2 declared dead: unanswered_probe (silent 15.2 s)"


def test_a_condemned_node_is_no_longer_a_suspect():
    state = all_but(watched(), 5.0, "device-0", "device-1")
    state = report_death(unanswered(state, ["device-0"]), "device-1")
    assert suspects(state, 6.0) == []
    assert unanswered(state, ["device-77"]) is state


def test_probe_timeout_zero_is_the_old_rule():
    state = all_but(watched(policy=FailurePolicy(probe_timeout_s=0)), 3.0, "device-2")
    _, actions = decide(state, 5.1)
    assert actions[0] == DeclareDead("device-2", Reason.MISSED_HEARTBEATS, pytest.approx(5.1))


def test_probe_timeout_must_not_be_negative():
    with pytest.raises(ConfigError, match="probe_timeout_s must be >= 0"):
        FailurePolicy(probe_timeout_s=-1.0)
    assert FailurePolicy().probe_timeout_s == 10.0  # the config's default


# ------------------------------------------------------------------ probes


def test_to_probe_groups_suspects_by_host_once_per_host():
    host_of = {"device-0": "dh-0", "device-1": "dh-0", "device-2": "dh-1", "edge-0": "edge-0"}
    probes = beats.Probes().send("dh-1", 3.0)
    hosts, unknown = beats.to_probe(["edge-0", "device-0", "device-1", "device-2", "device-9"], host_of, probes)
    assert hosts == {"edge-0": ["edge-0"], "dh-0": ["device-0", "device-1"]}  # dh-1 is being probed
    assert unknown == ["device-9"]


def test_probes_count_and_report():
    probes = beats.Probes().send("a", 1.0).send("b", 1.0).done("a", answered=True).done("b", answered=False)
    assert (probes.sent, probes.answered, probes.unanswered, dict(probes.in_flight)) == (2, 1, 1, {})
    senders = {"a": beats.Sender(1, 1.0, 1.0, 1.2, 4.1), "b": beats.Sender(1, 1.0, 1.0, 3.0, 2.0)}
    assert beats.report(senders, probes, 0.5) == beats.Report(2, 1, 1, 4.1, 3.0, 0.5)
