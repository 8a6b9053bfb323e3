"""The wait before a retry (rayagg/core/verdicts.py), on the pure supervision state with a
fake clock: a lost machine's second host, silent but not declared yet, is declared before
the retry may go out; live hosts are confirmed by their next heartbeat."""
import pytest

from rayagg.core import supervision
from rayagg.core.actions import FailurePolicy
from rayagg.core.tree import Tree
from rayagg.core.verdicts import await_verdicts, unconfirmed

INTERVAL_S, MAX_MISSED = 1.0, 5


class Machines:
    """A supervisor state and a fake clock; hosts beat every INTERVAL_S while the clock runs,
    except those on a machine that died. ``hosts``: host -> its nodes."""

    def __init__(self, hosts, dead_hosts=(), beat_phase_s=0.5):
        tree = Tree.balanced(["cloud", "edge", "device"], (1, 3, 6))
        self.hosts, self.silent = hosts, set(dead_hosts)
        self.now, self.phase = 0.0, beat_phase_s
        self.state = supervision.SupervisorState.start(
            # No probe: a dead machine's host refuses its probe at once and the supervisor
            # decides in the same tick, which is the silence rule as far as the state goes
            # (probes themselves: tests/test_beats.py, tests/test_heartbeats.py).
            tree, 0.0, policy=FailurePolicy(heartbeat_interval_s=INTERVAL_S, max_missed=MAX_MISSED,
                                            probe_timeout_s=0))
        self.ticks = 0
        self._beat(0.0)

    def _beat(self, at):
        for host, nodes in self.hosts.items():
            if host not in self.silent:
                self.state = supervision.heartbeats(self.state, nodes, at)

    def sleep(self, seconds):
        end = self.now + seconds
        beat = self.phase + INTERVAL_S * (int((self.now - self.phase) // INTERVAL_S) + 1)
        while beat <= end:  # the beats that fall within the sleep, in order
            self._beat(beat)
            beat += INTERVAL_S
        self.now = end

    def tick(self):
        self.ticks += 1
        self.state, _ = supervision.decide(self.state, self.now)

    def ages(self):
        return supervision.heartbeat_ages(self.state, self.now)

    def wait(self, since):
        return await_verdicts(since=since, deadline_s=INTERVAL_S * (MAX_MISSED + 1), poll_s=INTERVAL_S / 4,
                              tick=self.tick, ages=self.ages, clock=lambda: self.now, sleep=self.sleep)


HOSTS = {"cloud-0": ["cloud-0"], "edge-0": ["edge-0"], "edge-1": ["edge-1"], "edge-2": ["edge-2"],
         "device-host-0": ["device-0", "device-1"], "device-host-1": ["device-2", "device-3"],
         "device-host-2": ["device-4", "device-5"]}


def test_unconfirmed_are_the_nodes_silent_since_the_failure():
    assert unconfirmed({"a": 0.2, "b": 3.0, "c": 1.0}, 1.0) == {"b", "c"}
    assert unconfirmed({}, 1.0) == frozenset()


def test_a_lost_machines_silent_host_is_declared_before_the_retry():
    """A machine with edge-0's host and device-host-1 dies at t=2.1; edge-0's call fails at
    once (reported), device-host-1 had nothing pending and is only silent. The wait returns
    once it is declared dead for silence, not before."""
    machines = Machines(HOSTS)
    machines.sleep(2.1)  # last beats at 1.5: the machine dies at 2.1
    machines.silent = {"edge-0", "device-host-1"}
    machines.state = supervision.report_death(machines.state, "edge-0")
    machines.now = since = 2.4  # the failure seen
    assert machines.wait(since) == frozenset()
    assert {"edge-0", "device-2", "device-3"} <= machines.state.dead
    # declared once silent for more than interval x max_missed (last beat at 1.5), within a poll
    assert 1.5 + INTERVAL_S * MAX_MISSED < machines.now <= 1.5 + INTERVAL_S * MAX_MISSED + INTERVAL_S / 4
    assert machines.state.dead == {"edge-0", "device-2", "device-3"}  # the live hosts were heard


def test_with_every_host_alive_the_wait_is_one_heartbeat():
    machines = Machines(HOSTS)
    machines.now = since = 3.7
    assert machines.wait(since) == frozenset()
    assert machines.now - since <= INTERVAL_S + INTERVAL_S / 4
    assert machines.state.dead == frozenset()


def test_a_host_that_is_already_declared_needs_no_wait():
    machines = Machines(HOSTS, dead_hosts=["edge-0"])
    machines.sleep(7.0)
    machines.tick()
    assert "edge-0" in machines.state.dead
    machines.silent = set()  # from here on every live host beats; edge-0's beats are ignored
    since = machines.now
    assert machines.wait(since) == frozenset()
    assert machines.now - since <= INTERVAL_S + INTERVAL_S / 4


@pytest.mark.parametrize("deadline_s", [0.5, 2.0])
def test_the_wait_ends_at_its_deadline_with_the_nodes_still_silent(deadline_s):
    """A supervisor that never declares (its ticks do nothing) cannot hold the retry back
    past the deadline."""
    clock = [10.0]

    def sleep(seconds):
        clock[0] += seconds

    left = await_verdicts(since=10.0, deadline_s=deadline_s, poll_s=0.25, tick=lambda: None,
                          ages=lambda: {"edge-1": 0.1 + clock[0] - 9.0, "edge-2": 0.0},
                          clock=lambda: clock[0], sleep=sleep)
    assert left == {"edge-1"}
    assert clock[0] == pytest.approx(10.0 + deadline_s)
