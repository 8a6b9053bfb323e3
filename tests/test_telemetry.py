"""Run telemetry (rayagg/runtime/telemetry.py) without starting Ray: what a round's records,
the run's events and the supervisor's heartbeat times turn into, and how gauges are
kept and re-sent. That the values reach Ray's Prometheus endpoint needs a Ray head and
was checked by hand (see the module docstring)."""
import dataclasses
import threading
import types

import pytest

from rayagg.core.events import Event, EventKind
from rayagg.core.schedule import RoundResult
from rayagg.core.wire import Link
from rayagg.core.supervision import SupervisorState, heartbeats
from rayagg.core.tree import Tree
from rayagg.nodes import tier_of
from rayagg.rundir.metrics import NodeMetrics
from rayagg.runtime.telemetry import (COUNTER, GAUGE, METRICS, RaySink, RunTelemetry, TelemetryObserver, event_rows,
                                      heartbeat_rows, round_rows)

TIERS = ["cloud", "edge", "device"]


def record(node, accuracy, seconds=1.0, round_index=3, round_s=10.0, **load):
    return NodeMetrics(round_index, node, tier_of(node), accuracy, 1.0 - accuracy, seconds, round_s,
                       **load)


def a_round():
    return [record("cloud-0", 0.9, 4.0, children=2, bridge_samples=90),
            record("edge-0", 0.8, 3.0, parent="cloud-0", children=2, bridge_samples=40),
            record("edge-1", 0.6, 5.0, parent="cloud-0", children=1, bridge_samples=20),
            record("device-0", 0.5, 1.0, parent="edge-0"), record("device-1", 0.7, 2.0, parent="edge-0"),
            record("device-2", 0.3, 6.0, parent="edge-1")]


def values(rows, metric, key="tier"):
    """tag ``key``'s value -> the row's value, for ``metric``'s rows."""
    return {row.tags.get(key, ""): row.value for row in rows if row.metric == metric}


class Recorder:
    """A sink that keeps every batch it was sent."""

    def __init__(self):
        self.batches = []

    def record(self, rows):
        self.batches.append(list(rows))


# ------------------------------------------------------------------ a round's records


def test_round_gives_mean_accuracy_and_size_per_tier():
    rows = round_rows("run-a", a_round(), TIERS)
    assert values(rows, "rayagg_accuracy") == pytest.approx({"cloud": 0.9, "edge": 0.7, "device": 0.5})
    assert values(rows, "rayagg_loss") == pytest.approx({"cloud": 0.1, "edge": 0.3, "device": 0.5})
    assert values(rows, "rayagg_nodes") == {"cloud": 1, "edge": 2, "device": 3}
    assert values(rows, "rayagg_busy_max_seconds") == {"cloud": 4.0, "edge": 5.0, "device": 6.0}
    assert values(rows, "rayagg_last_round") == {"": 3}
    assert values(rows, "rayagg_last_round_seconds") == values(rows, "rayagg_round_seconds_total") == {"": 10.0}
    assert values(rows, "rayagg_rounds_total") == {"": 1}


def test_round_has_per_node_series_for_non_leaf_tiers_only():
    rows = round_rows("run-a", a_round(), TIERS)
    assert values(rows, "rayagg_node_accuracy", "node") == {"cloud-0": 0.9, "edge-0": 0.8, "edge-1": 0.6}
    assert values(rows, "rayagg_node_bridge_samples", "node") == {"cloud-0": 90, "edge-0": 40, "edge-1": 20}
    assert values(rows, "rayagg_node_children", "node") == {"cloud-0": 2, "edge-0": 2, "edge-1": 1}
    assert not any(row.tags.get("node", "").startswith("device") for row in rows)


def test_every_row_is_tagged_with_the_run_and_its_metric_tags():
    rows = round_rows("run-a", a_round(), TIERS, moved_bytes=4096)
    rows += event_rows("run-a", [Event.now(1, EventKind.RETRY, "", "round 1 retried")])
    for row in rows:
        assert row.tags["run"] == "run-a"
        assert set(row.tags) == set(METRICS[row.metric].tags), row.metric


def test_moved_bytes_set_the_round_gauge_and_add_to_the_counter():
    rows = round_rows("r", a_round(), TIERS, moved_bytes=4096)
    assert values(rows, "rayagg_last_round_moved_bytes") == {"": 4096}
    assert values(rows, "rayagg_moved_bytes_total") == {"": 4096}
    unknown = round_rows("r", a_round(), TIERS)
    assert not [row for row in unknown if "moved" in row.metric]
    nothing = round_rows("r", a_round(), TIERS, moved_bytes=0)  # a counter may only grow
    assert values(nothing, "rayagg_last_round_moved_bytes") == {"": 0}
    assert not values(nothing, "rayagg_moved_bytes_total")


def test_round_without_a_tier_leaves_it_out():
    without_devices = [r for r in a_round() if r.tier != "device"]
    rows = round_rows("r", without_devices, TIERS)
    assert set(values(rows, "rayagg_accuracy")) == {"cloud", "edge"}


@pytest.mark.parametrize("records", [[], [record("cloud-0", 0.9, round_index=1), record("edge-0", 0.5)]])
def test_round_needs_the_records_of_exactly_one_round(records):
    with pytest.raises(ValueError, match="exactly one round"):
        round_rows("r", records, TIERS)


# ------------------------------------------------------------------ events


def test_events_count_per_kind_and_tier():
    happened = [(EventKind.DECLARE_DEAD, "edge-1"), (EventKind.REPARENT, "device-2"),
                (EventKind.REPARENT, "device-3"), (EventKind.DECLARE_DEAD, "device-7"), (EventKind.RETRY, ""),
                (EventKind.JOIN, "device-9")]
    events = [Event.now(2, kind, node, "") for kind, node in happened]
    counts = {(row.tags["kind"], row.tags["tier"]): row.value for row in event_rows("r", events)}
    assert counts == {("declare_dead", "edge"): 1, ("declare_dead", "device"): 1, ("reparent", "device"): 2,
                      ("retry", ""): 1, ("join", "device"): 1}
    assert event_rows("r", []) == []


def test_the_observer_sends_each_round_with_the_bytes_it_moved(tiny_config):
    plan = types.SimpleNamespace(config=tiny_config)
    sink = Recorder()
    observer = TelemetryObserver("r", plan, RunTelemetry("r", sink, period_s=None))
    moved = {"edge-0": Link(up=640, down=640), "device-0": Link(up=320, down=100)}
    observer.round_collected(RoundResult(3, {}, None, 10.0, moved), a_round())
    assert values(sink.batches[-1], "rayagg_last_round_moved_bytes") == {"": 640 + 640 + 320 + 100}
    observer.event(Event.now(3, EventKind.DECLARE_DEAD, "edge-1", ""))
    assert values(sink.batches[-1], "rayagg_events_total", "kind") == {"declare_dead": 1}


# ------------------------------------------------------------------ heartbeats


def supervised(counts=(1, 2, 4)):
    """Started at 100; cloud-0, edge-0, device-0 and device-1 heard at 108, edge-1 and
    device-2 at 105; device-3 never heard from."""
    state = SupervisorState.start(Tree.balanced(TIERS, counts), 100.0)
    state = heartbeats(state, ["cloud-0", "edge-0", "device-0", "device-1"], 108.0)
    return heartbeats(state, ["edge-1", "device-2"], 105.0)


def test_heartbeat_ages_per_node_above_the_leaves_and_per_tier_for_all():
    rows = heartbeat_rows("r", supervised(), 110.0)
    ages = values(rows, "rayagg_heartbeat_age_seconds", "node")
    assert ages == {"cloud-0": 2.0, "edge-0": 2.0, "edge-1": 5.0}
    assert values(rows, "rayagg_heartbeat_age_max_seconds") == {"cloud": 2.0, "edge": 5.0, "device": 10.0}
    assert values(rows, "rayagg_heartbeat_age_mean_seconds") == pytest.approx(
        {"cloud": 2.0, "edge": 3.5, "device": (2 + 2 + 5 + 10) / 4})  # device-3: silent since the start


def test_dead_nodes_have_no_age_and_are_counted_per_tier_without_leavers():
    state = dataclasses.replace(supervised(), dead=frozenset({"edge-1", "device-2", "device-1", "device-3"}),
                                left=frozenset({"device-1"}))
    rows = heartbeat_rows("r", state, 110.0)
    assert values(rows, "rayagg_heartbeat_age_seconds", "node") == {"cloud-0": 2.0, "edge-0": 2.0}
    assert values(rows, "rayagg_heartbeat_age_max_seconds") == {"cloud": 2.0, "edge": 2.0, "device": 2.0}
    assert values(rows, "rayagg_dead_nodes") == {"cloud": 0, "edge": 1, "device": 2}


def test_a_restarting_node_has_no_age_until_heard_and_a_tier_without_ages_has_no_age_rows():
    state = dataclasses.replace(supervised((1, 1, 2)), starting=frozenset({"edge-0"}),
                                dead=frozenset({"device-0", "device-1"}))
    rows = heartbeat_rows("r", state, 110.0)
    assert values(rows, "rayagg_heartbeat_age_max_seconds") == {"cloud": 2.0}
    assert values(rows, "rayagg_dead_nodes") == {"cloud": 0, "edge": 0, "device": 2}


def test_a_stamp_after_now_is_age_zero():
    rows = heartbeat_rows("r", supervised(), 106.0)
    assert values(rows, "rayagg_heartbeat_age_max_seconds")["cloud"] == 0.0


# ------------------------------------------------------------------ RunTelemetry


def test_gauges_are_resent_on_refresh_and_a_new_round_replaces_the_old_series():
    sink = Recorder()
    telemetry = RunTelemetry("r", sink, period_s=None)
    telemetry.round(a_round(), TIERS, moved_bytes=10)
    telemetry.events([Event.now(3, EventKind.RESTART, "cloud-0", "")])
    without_edge_1 = [r for r in a_round() if r.node != "edge-1"]
    telemetry.round([dataclasses.replace(r, round=4) for r in without_edge_1], TIERS)
    telemetry.refresh()
    resent = sink.batches[-1]
    assert {METRICS[row.metric].kind for row in resent} == {GAUGE}  # counters are never re-added
    assert values(resent, "rayagg_last_round") == {"": 4}
    assert "edge-1" not in values(resent, "rayagg_node_accuracy", "node")  # its series goes
    assert not values(resent, "rayagg_last_round_moved_bytes")


def test_watched_heartbeats_are_recomputed_from_the_latest_state_on_refresh():
    sink = Recorder()
    telemetry = RunTelemetry("r", sink, period_s=None)
    box = {"state": supervised()}
    telemetry.watch_heartbeats(lambda: box["state"])
    assert "edge-1" in values(sink.batches[-1], "rayagg_heartbeat_age_seconds", "node")
    box["state"] = dataclasses.replace(box["state"], dead=frozenset({"edge-1"}))  # the supervisor's next state
    telemetry.refresh()
    assert "edge-1" not in values(sink.batches[-1], "rayagg_heartbeat_age_seconds", "node")
    assert values(sink.batches[-1], "rayagg_dead_nodes")["edge"] == 1


def test_close_stops_resending_gauges():
    sink = Recorder()
    telemetry = RunTelemetry("r", sink, period_s=None)
    telemetry.round(a_round(), TIERS)
    telemetry.close()
    telemetry.refresh()
    assert sink.batches[-1] == []


def test_the_daemon_thread_resends_gauges_until_closed():
    sent = threading.Event()

    class Signal(Recorder):
        def record(self, rows):
            super().record(rows)
            if len(self.batches) >= 2:
                sent.set()

    sink = Signal()
    telemetry = RunTelemetry("r", sink, period_s=0.01)
    telemetry.round(a_round(), TIERS)
    assert sent.wait(5.0)
    telemetry.close()
    assert values(sink.batches[1], "rayagg_last_round") == {"": 3}


# ------------------------------------------------------------------ the Ray metric objects (Ray not started)


def test_metric_names_are_valid_and_counters_end_in_total():
    import re

    for name, spec in METRICS.items():
        assert re.fullmatch(r"rayagg_[a-z_]+", name), name
        assert name.endswith("_total") == (spec.kind == COUNTER), name


@pytest.mark.ray
def test_ray_sink_accepts_every_row_without_ray_and_rejects_a_missing_tag():
    import ray

    sink = RaySink()
    state = supervised()
    sink.record(round_rows("r", a_round(), TIERS, moved_bytes=5)
                + event_rows("r", [Event.now(1, EventKind.JOIN, "device-1", "")])
                + heartbeat_rows("r", dataclasses.replace(state, dead=frozenset({"edge-1"})), 110.0))
    assert not ray.is_initialized()  # recording never starts or joins Ray
    bad = round_rows("r", a_round(), TIERS)[0]
    with pytest.raises(ValueError, match="needs tags"):
        sink.record([bad.__class__(bad.metric, 1.0, {})])
