"""Heartbeats under load on a real local Ray (issue 25 item 5): silence alone does not kill.

One run of the quick tiny tree, devices two to a host, with short deadlines (beats every
0.25 s, 4 missed = 1 s of silence, probes answered within 2 s). device-host-0 stops its
heartbeats as soon as the hosts start (``pause_heartbeats``: a starved heartbeat thread)
but answers every probe, in the host's own concurrency group: its devices are never
declared dead. device-host-1 really hangs in round 2 (``hang``: no heartbeats, its calls
and its probe never return): its devices are declared dead within the deadline and the
probe's (plus slack), and the round is retried without them.
"""
import time

import pytest
import ray
from conftest import inspected_run, packed

from rayagg.learning.plan import make_plan
from rayagg.observe import RunObserver
from rayagg.rundir.events import read_events
from rayagg.runtime.faults import FaultAt
from rayagg.runtime.runner import RayRunner

pytestmark = pytest.mark.ray

INTERVAL_S, MAX_MISSED, PROBE_TIMEOUT_S = 0.25, 4, 2.0
SLACK_S = 2.0  # the runner's tick (one interval) and a busy machine's scheduling


class PauseThenHang(RunObserver):
    """A fault hook (pauses device-host-0's heartbeats once the hosts start; hangs
    device-host-1 as round 2's first call to it goes out) and an observer (keeps the
    supervisor's heartbeat report before the run closes)."""

    def __init__(self):
        self.runner, self.hung_at, self.report = None, None, None

    def fault(self, point):
        handles = self.runner.hosts.handles
        if point.at == FaultAt.HOSTS_STARTED and "device-host-0" in point.hosts:
            ray.get(handles["device-host-0"].pause_heartbeats.remote(), timeout=30)
        elif (point.at == FaultAt.CALL_SUBMITTED and self.hung_at is None and self.runner.round_index == 2
              and point.node in ("device-2", "device-3")):
            ray.get(handles["device-host-1"].hang.remote(), timeout=30)  # in the control group: at once
            self.hung_at = time.monotonic()

    def run_finished(self, outcome):
        self.report = ray.get(self.runner.recovery.supervisor.heartbeat_report.remote(), timeout=30)


def test_a_silent_host_that_answers_lives_and_a_hung_one_dies_in_time(ray_session, quick_config, tiny_dataset,
                                                                       tmp_path):
    config = packed(quick_config, device=2, edge=2).with_changes(
        supervision={"heartbeat_interval_s": INTERVAL_S, "max_missed": MAX_MISSED,
                     "probe_timeout_s": PROBE_TIMEOUT_S},
        runtime={"rounds_in_flight": 1})
    hook = PauseThenHang()
    hook.runner = runner = RayRunner(make_plan(config, tiny_dataset), faults=hook.fault)
    records, inspected = inspected_run(runner, tmp_path, observers=[hook])

    events = read_events(tmp_path / "events.parquet")
    deaths = [e for e in events if e.kind == "declare_dead"]
    assert sorted(e.node for e in deaths) == ["device-2", "device-3"], [e.detail for e in deaths]
    assert all("unanswered_probe" in e.detail and e.round == 2 for e in deaths)
    deadline_s = INTERVAL_S * MAX_MISSED + PROBE_TIMEOUT_S
    assert max(e.monotonic_s for e in deaths) - hook.hung_at <= deadline_s + SLACK_S
    assert inspected["dead"] == {"device-2", "device-3"}
    assert {r.node for r in records if r.round == 3} == {"cloud-0", "edge-0", "edge-1", "device-0", "device-1"}
    # device-host-0 sent no heartbeat after the start: only its probes' answers kept it alive
    report = hook.report
    assert report.probes_answered >= 2 and report.probes_unanswered == 1, report
