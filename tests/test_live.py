"""The live view (rayagg/rundir/live.py), `rayagg status` on a live record, and the run
directory's shared-storage probe: all without Ray."""
import json
import os
import socket

import pytest
from click.testing import CliRunner

from rayagg.rundir.directory import end_probe, probe_run_dir, start_probe
from rayagg.rundir import live
from rayagg.rundir.live import write_live
from rayagg.cli import main
from rayagg.core.tree import Tree


def views(**changes):
    tree = Tree.balanced(["cloud", "edge", "device"], [1, 2, 4])
    now = dict(tree.parent_of)
    now.update(changes)
    moved = Tree(tree.tier_names, tree.tier_of, now)
    return live.node_views(moved, tree, frozenset({"device-3"}), frozenset(), {n: n for n in tree.nodes},
                           {"edge-0": "10.0.0.2"}, {"edge-0": 300, "device-0": 100},
                           {"edge-0": (2, 0.5), "device-0": (4, 0.25), "device-3": (1, 0.125)},
                           {"edge-0": 0.4, "device-3": 9.0})


def test_node_views_mark_dead_and_moved_nodes():
    by_node = {view.node: view for view in views(**{"device-1": "edge-1"})}
    assert by_node["edge-0"].machine == "10.0.0.2" and by_node["edge-0"].bridge_samples == 300
    assert (by_node["edge-0"].done, by_node["edge-0"].accuracy) == (2, 0.5)
    assert by_node["device-1"].moved_from == "edge-0" and by_node["device-1"].parent == "edge-1"
    assert by_node["device-0"].moved_from == "" and not by_node["device-0"].joined
    assert by_node["device-3"].status == "dead"
    assert by_node["device-3"].heartbeat_age_s is None  # a dead node's last beat says nothing now
    assert by_node["cloud-0"].parent == "" and by_node["cloud-0"].accuracy is None


def test_render_shows_each_node_round_and_marks():
    record = live.to_record(views(**{"device-1": "edge-1"}), rounds=5, done=2, in_flight=[3, 4], updated=100.0)
    lines = live.render(json.loads(json.dumps(record)), now=103.0)
    assert lines[0] == "round 2 of 5 done; in flight: round 3, 4 (as of 3 s ago)"
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["edge-0"].split()[4:6] == ["0.4", "s"]
    assert rows["edge-0"].split()[-2:] == ["3", "0.500"]  # done with round 2: in round 3
    assert rows["device-0"].split()[-2:] == ["idle", "0.250"]  # done with every round in flight
    assert rows["device-1"].endswith("moved from edge-0")
    assert rows["device-3"].endswith("DEAD") and " 1 " in rows["device-3"]


def test_render_sums_up_a_large_leaf_tier_per_parent():
    tree = Tree.balanced(["cloud", "edge", "device"], [1, 2, 60])
    nodes = live.node_views(tree, tree, frozenset({"device-0"}), frozenset(), {}, {}, {}, {}, {})
    record = live.to_record(nodes, rounds=1, done=0, in_flight=[1], updated=0.0)
    lines = live.render(record, now=0.0)
    assert not any(line.startswith("device-") for line in lines)
    summary = [line for line in lines if "under" in line]
    assert len(summary) == 2 and sum(int(line.split()[2]) for line in summary) == 60
    assert "(1 dead)" in summary[0]
    assert sum(line.startswith("device-") for line in live.render(record, 0.0, every_leaf=True)) == 60


def write_live_run(tmp_path, pid, view):
    (tmp_path / "config.yaml").write_text("name: x\n")
    write_live(tmp_path, "127.0.0.1:1", "ns", pid, socket.gethostname(), view=view)


def test_status_shows_the_live_tree(tmp_path):
    record = live.to_record(views(), rounds=5, done=2, in_flight=[3], updated=0.0)
    write_live_run(tmp_path, os.getpid(), record)
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "live: driver pid" in result.output and "round 2 of 5 done" in result.output
    assert "device-3" in result.output and "DEAD" in result.output


def test_status_says_when_the_driver_is_gone(tmp_path):
    gone = 2**22 + 12345  # no such pid
    write_live_run(tmp_path, gone, live.to_record(views(), rounds=5, done=2, in_flight=[], updated=0.0))
    result = CliRunner().invoke(main, ["status", str(tmp_path), "--watch"])
    assert result.exit_code == 0, result.output
    assert "not live: its driver" in result.output and "--resume" in result.output


def stale_record(tmp_path, **record):
    """A live.json as a crashed driver left it (hand-written: write_live records the
    identity of the process it names)."""
    (tmp_path / "config.yaml").write_text("name: x\n")
    record = {"address": "127.0.0.1:1", "namespace": "ns", "hostname": socket.gethostname(), **record}
    (tmp_path / "live.json").write_text(json.dumps(record))


@pytest.mark.parametrize("case", ["pid 1 with another start time", "pid 1 without a start time",
                                  "before a reboot"])
def test_a_stale_live_record_naming_a_live_pid_is_not_a_live_driver(tmp_path, case):
    from rayagg.rundir.directory import check_new_run_dir

    record = {"pid 1 with another start time": {"pid": 1, "started": 123456789},  # not pid 1's
              "pid 1 without a start time": {"pid": 1},  # an older record: pid 1 runs no Python, no rayagg
              "before a reboot": {"pid": os.getpid(), "started": 1, "boot_id": "a-boot-before-this-one"}}[case]
    stale_record(tmp_path, **record)
    check_new_run_dir(tmp_path, overwrite=True)  # not blocked by a driver that is gone
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 0 and f"not live: its driver (pid {record['pid']}) is gone" in result.output


def test_the_live_record_identifies_its_driver_by_start_time(tmp_path):
    from rayagg.rundir.directory import DriverState, driver_state
    from rayagg.rundir.live import read_live

    write_live_run(tmp_path, os.getpid(), None)
    record = read_live(tmp_path)
    assert record["started"] == live.process_start(os.getpid()) and record["boot_id"] == live.boot_id()
    assert driver_state(record)[0] == DriverState.LIVE
    assert driver_state({**record, "started": record["started"] + 1})[0] == DriverState.GONE


def test_a_live_record_from_another_machine_is_described_as_such(tmp_path):
    from rayagg.errors import RunDirError
    from rayagg.rundir.directory import check_new_run_dir

    stale_record(tmp_path, pid=1, hostname="another-host.example")
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert ("maybe live: its driver, pid 1, is on another machine (another-host.example) and cannot be "
            "checked from here") in result.output
    with pytest.raises(RunDirError, match=r"may be training in .*another machine \(another-host.example\)"):
        check_new_run_dir(tmp_path, overwrite=True)


def test_status_names_a_corrupt_live_view(tmp_path):
    write_live_run(tmp_path, os.getpid(), {"nodes": [{"node": "x"}]})
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 2 and "live.json is corrupt" in result.output


def test_probe_accepts_a_directory_seen_and_writable(tmp_path):
    token = start_probe(tmp_path)
    assert probe_run_dir(tmp_path, token, "edge-0 on a") is None
    end_probe(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_probe_names_a_directory_that_is_another_one_on_that_machine(tmp_path):
    answer = probe_run_dir(tmp_path / "elsewhere", "t", "edge-0 on b")
    assert answer.startswith("edge-0 on b does not see") and "another directory there" in answer
    token = start_probe(tmp_path)
    assert "another token" in probe_run_dir(tmp_path, token + "x", "edge-0 on b")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_probe_names_a_directory_it_cannot_write(tmp_path):
    token = start_probe(tmp_path)
    tmp_path.chmod(0o500)
    try:
        answer = probe_run_dir(tmp_path, token, "edge-0 on c")
    finally:
        tmp_path.chmod(0o700)
    assert answer.startswith("edge-0 on c cannot write to")
