"""`rayagg bench --trace`: the trace builder on synthetic timings (pure, no Ray)."""
import json

import pytest

from rayagg.core.schedule import CallTrace, Timing, critical_path, match_timings, round_steps
from rayagg.core.tree import Tree
from rayagg.tools.trace import CRITICAL_TRACK, trace_events, write_trace

TREE = Tree.balanced(["cloud", "edge", "device"], [1, 2, 4])  # edge-0: device-0, 1; edge-1: 2, 3
# Made-up hosts that carry several nodes each (the runtime packs within a tier; the builder takes any map).
HOST_OF = {"cloud-0": "cloud-0", "edge-0": "mixed-host-0", "device-0": "mixed-host-0",
           "device-1": "mixed-host-0", "edge-1": "mixed-host-1", "device-2": "mixed-host-1",
           "device-3": "mixed-host-1"}
EPOCH = 1_700_000_000.0
COST = {"cloud-0": 0.5, "edge-0": 0.2, "edge-1": 0.6}  # devices 0.1 s a call


def simulated(rounds=2, gap_s=0.003):
    """Rounds of FedAgg's steps with their timings, as a host-serial schedule would start
    them (each call ``gap_s`` after what it waits for), and their critical path."""
    all_steps, timings, finish, last_on_host = [], [], {}, {}
    for position in range(rounds):
        steps = round_steps(TREE, TREE.leaves, scored=["cloud-0", "edge-0"])
        measured = []
        for index, step in enumerate(steps):
            seconds = COST.get(step.node, 0.1) * (2 if step.call == "learn" else 1)
            waits = [last_on_host.get(HOST_OF[step.node]), *((position, i) for i in step.inputs)]
            start = max((finish[w] for w in waits if w is not None), default=EPOCH) + gap_s
            finish[position, index] = start + seconds
            last_on_host[HOST_OF[step.node]] = (position, index)
            measured.append(Timing(seconds, seconds * 0.8, seconds * 0.9, start))
        all_steps.append(steps)
        timings.append(measured)
    return all_steps, timings, critical_path(all_steps, timings, HOST_OF.__getitem__)


@pytest.fixture(scope="module")
def built():
    rounds, timings, path = simulated()
    return rounds, timings, path, trace_events(rounds, timings, HOST_OF, path, [1, 2], name="tiny")


def slices(trace, category=None):
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and (category is None or e["cat"] == category)]


def names(trace, kind):
    return {(e["pid"], e.get("tid")) if kind == "thread_name" else e["pid"]: e["args"]["name"]
            for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == kind}


def test_every_call_is_a_complete_slice_at_a_nonnegative_time(built):
    rounds, timings, _, trace = built
    assert trace["displayTimeUnit"] == "ms"
    on_hosts = [e for e in slices(trace) if e["cat"] != "critical"]
    assert len(on_hosts) == sum(len(steps) for steps in rounds)
    for event in slices(trace):
        assert event["ts"] >= 0 and event["dur"] >= 0
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
    assert min(e["ts"] for e in on_hosts) == 0  # from the first call's start
    by_key = {(e["args"]["round"], e["args"]["step"]): e for e in on_hosts}
    first = min(t.started for measured in timings for t in measured)
    for position, (steps, measured) in enumerate(zip(rounds, timings)):
        for index, (step, timing) in enumerate(zip(steps, measured)):
            event = by_key[position + 1, index]
            assert event["name"] == step.call and event["args"]["node"] == step.node
            assert event["args"]["leaves"] == len(step.leaves) and event["args"]["host"] == HOST_OF[step.node]
            assert event["dur"] == pytest.approx(timing.seconds * 1e6)
            assert event["ts"] == pytest.approx((timing.started - first) * 1e6, abs=1e-3)
            assert names(trace, "thread_name")[event["pid"], event["tid"]] == step.node


def test_one_track_per_host_and_per_node_named_by_metadata(built):
    trace = built[3]
    processes, threads = names(trace, "process_name"), names(trace, "thread_name")
    assert sorted(processes.values()) == sorted({CRITICAL_TRACK, *(f"host {h}" for h in HOST_OF.values())})
    for (pid, _), node in threads.items():
        assert processes[pid] == (CRITICAL_TRACK if node == CRITICAL_TRACK else f"host {HOST_OF[node]}")
    assert sorted(threads.values()) == sorted([CRITICAL_TRACK, *HOST_OF])
    used = {(e["pid"], e["tid"]) for e in slices(trace)}
    assert used == set(threads)  # every slice on a named track, every named track used
    # Tracks in the hosts' order, the critical path on top.
    order = {e["pid"]: e["args"]["sort_index"] for e in trace["traceEvents"] if e["name"] == "process_sort_index"}
    ranked = [processes[pid] for pid in sorted(order, key=order.get)]
    assert ranked == [CRITICAL_TRACK, "host cloud-0", "host mixed-host-0", "host mixed-host-1"]


def test_the_critical_slices_are_exactly_the_paths_calls(built):
    rounds, _, path, trace = built
    assert 1 < len(path.steps) < sum(len(steps) for steps in rounds)
    expected = [(position + 1, index) for position, index in path.steps]
    marked = [e for e in slices(trace) if e["args"]["critical"] and e["cat"] != "critical"]
    assert sorted((e["args"]["round"], e["args"]["step"]) for e in marked) == sorted(expected)
    assert all(e["cat"] == "call,critical" for e in marked)
    assert all(e["cat"] == "call" for e in slices(trace) if not e["args"]["critical"])
    copies = slices(trace, "critical")
    assert [(e["args"]["round"], e["args"]["step"]) for e in copies] == expected  # in path order
    assert [e["args"]["path_position"] for e in copies] == list(range(len(expected)))
    assert {names(trace, "thread_name")[e["pid"], e["tid"]] for e in copies} == {CRITICAL_TRACK}
    original = {(e["args"]["round"], e["args"]["step"]): e for e in marked}
    for copy in copies:
        twin = original[copy["args"]["round"], copy["args"]["step"]]
        assert (copy["name"], copy["ts"], copy["dur"]) == (twin["name"], twin["ts"], twin["dur"])
    # The path's slices add up to the path (the simulated schedule only adds the gaps).
    assert sum(e["dur"] for e in copies) / 1e6 == pytest.approx(path.seconds)
    assert trace["otherData"]["critical_path_s"] == pytest.approx(path.seconds)


def test_flow_arrows_chain_the_path_from_track_to_track(built):
    _, _, path, trace = built
    starts = [e for e in trace["traceEvents"] if e["ph"] == "s"]
    ends = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "f"}
    assert len(starts) == len(ends) == len(path.steps) - 1
    marked = sorted((e for e in slices(trace) if e["cat"] == "call,critical"), key=lambda e: e["args"]["round"] * 1000 + e["args"]["step"])
    by_key = {(e["args"]["round"], e["args"]["step"]): e for e in marked}
    chain = [by_key[position + 1, index] for position, index in path.steps]
    for start in starts:
        before, after, end = chain[start["id"]], chain[start["id"] + 1], ends[start["id"]]
        assert (start["pid"], start["tid"]) == (before["pid"], before["tid"])
        assert before["ts"] <= start["ts"] <= before["ts"] + before["dur"]
        assert (end["pid"], end["tid"], end["bp"]) == (after["pid"], after["tid"], "e")
        assert after["ts"] <= end["ts"] <= after["ts"] + after["dur"]


def test_the_file_round_trips_as_json(built, tmp_path):
    rounds, timings, path, trace = built
    file = tmp_path / "traces" / "tiny.json"
    written = write_trace(file, rounds, timings, HOST_OF, path, [1, 2], name="tiny")
    assert json.loads(file.read_text()) == written == trace
    assert trace["otherData"]["config"] == "tiny" and trace["otherData"]["rounds"] == [1, 2]


def test_slices_of_one_track_never_overlap_even_when_stamps_do():
    rounds, timings, path = simulated(rounds=1, gap_s=0.0)
    # Stamps a microsecond early, as a host's clocks may round: each call starts before
    # the one before it on its node ended.
    early = [[Timing(t.seconds, t.torch_s, t.cpu_s, t.started - 2e-6) if index else t
              for index, t in enumerate(measured)] for measured in timings]
    trace = trace_events(rounds, early, HOST_OF, path)
    ends = {}
    for event in sorted(slices(trace), key=lambda e: e["ts"]):
        track = event["pid"], event["tid"]
        assert event["ts"] >= ends.get(track, 0.0) - 1e-6
        ends[track] = event["ts"] + event["dur"]


def test_calls_without_a_start_or_timings_of_another_shape_are_refused():
    rounds, timings, path = simulated(rounds=1)
    unstamped = [[Timing(t.seconds, t.torch_s, t.cpu_s) for t in timings[0]]]
    with pytest.raises(ValueError, match="no start time"):
        trace_events(rounds, unstamped, HOST_OF, path)
    with pytest.raises(ValueError, match="steps but"):
        trace_events(rounds, [timings[0][:-1]], HOST_OF, path)
    with pytest.raises(ValueError, match="round numbers"):
        trace_events(rounds, timings, HOST_OF, path, [1, 2])


def test_match_timings_keeps_the_hosts_start_stamps():
    steps = round_steps(TREE, TREE.leaves)
    traces = {}
    for number, step in enumerate(steps):
        traces.setdefault(step.node, []).append(CallTrace(step.call, 1.0, 0.5, 0.5, EPOCH + number))
    (matched,) = match_timings([steps], traces)
    assert [t.started for t in matched] == [EPOCH + number for number in range(len(steps))]
