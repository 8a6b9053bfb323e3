"""A run directory's damaged or missing files, as `rayagg run --resume` and `rayagg status`
see them: a deleted events file, truncated Parquet files, a damaged last checkpoint. Each
is one line naming the file and exit code 2, and a refused resume changes nothing.

The run directories are copies of the session's in-process run (conftest's ``local_run``):
no test here trains or starts Ray."""
import json
import pathlib
import shutil
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from rayagg.cli import main
from rayagg.core.events import Event
from rayagg.errors import CheckpointError
from rayagg.files import sha256_bytes
from rayagg.rundir.events import read_events, write_events
from rayagg.rundir.manifest import RunState


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(run: pathlib.Path) -> dict:
    """Every file of ``run`` and its bytes: a refused command must leave them as they were."""
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def run(local_run, tmp_path):
    """A copy of the session's finished 2-round run (the tiny tree, in-process driver)."""
    _, _, out = local_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy


def with_events(run: pathlib.Path, *details: str) -> pathlib.Path:
    """Gives ``run`` events and commits its cut again, as the round loop does: the events
    file is written before a cut's manifest (rayagg/observe.py, rayagg/loop.py)."""
    write_events([Event.now(1, "declare_dead", "edge-0", detail) for detail in details], run / "events.parquet")
    state = RunState.load(run)
    RunState(state.round, state.parent_of, state.dead, state.checkpoints, state.digests, state.left).save(run)
    return run


def refused_resume(run: pathlib.Path) -> str:
    """`rayagg run --resume RUN --rounds 3 --local`: exit 2, one line, and no file changed."""
    before = snapshot(run)
    started = time.monotonic()
    result = invoke("run", "--resume", run, "--rounds", "3", "--local")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert snapshot(run) == before
    assert time.monotonic() - started < 60  # refused before training
    return result.output


# ------------------------------------------------------------------ events.parquet and the manifest


def test_a_deleted_events_file_is_refused_on_resume_and_changes_nothing(run):
    with_events(run, "edge-0 declared dead: killed")
    (run / "events.parquet").unlink()
    output = refused_resume(run)
    assert f"{run / 'events.parquet'} is missing" in output and len(output.strip().splitlines()) == 1


def test_status_names_a_deleted_events_file(run):
    with_events(run, "edge-0 declared dead: killed")
    (run / "events.parquet").unlink()
    result = invoke("status", run)
    assert result.exit_code == 2 and f"{run / 'events.parquet'} is missing" in result.output


def test_an_events_file_with_fewer_events_than_the_manifest_records_is_refused(run):
    with_events(run, "first", "second")
    write_events([Event.now(1, "declare_dead", "edge-0", "first")], run / "events.parquet")  # an older copy
    assert "fewer than the 2" in refused_resume(run)


def test_the_manifest_records_the_events_written_before_its_cut(run):
    assert json.loads((run / "state.json").read_text())["events"] == 0  # the run had none
    with_events(run, "a", "b", "c")
    assert RunState.load(run).events == 3
    write_events([Event.now(3, "restart", "edge-0", d) for d in "abcd"], run / "events.parquet")
    assert len(read_events(run / "events.parquet")) == 4  # events after the cut: still resumable


def test_a_manifest_written_before_events_were_recorded_still_resumes_without_them(run, tiny_config, tiny_dataset):
    """A format-3 manifest does not say how many events there were: a missing events file
    then reads as none, as it did when that run was written."""
    from rayagg.learning.plan import make_plan
    from rayagg.rundir.resume import earlier_events, load_for_resume

    record = json.loads((run / "state.json").read_text())
    body = {k: v for k, v in record.items() if k not in ("format", "sha256", "events", "sizes")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    (run / "state.json").write_text(json.dumps({"format": 3, **body, "sha256": sha256_bytes(canonical)}))
    assert not (run / "events.parquet").exists()
    state = load_for_resume(run, make_plan(tiny_config.with_rounds(3), tiny_dataset))
    assert state.events is None and earlier_events(run, state) == []


# ------------------------------------------------------------------ truncated Parquet files

TRUNCATIONS = {"half": lambda n: n // 2, "all but 1 byte": lambda n: n - 1, "5 bytes": lambda n: 5}


@pytest.fixture
def pyarrow_sees_only_whole_files(monkeypatch):
    """Fails the test if bytes that are not a whole Parquet file reach pyarrow: some
    damaged files crash it (abort, exit 134) instead of raising. (Recorded, not raised
    in pyarrow's place: the reader would turn an exception into its own error.)"""
    import pyarrow.parquet as pq

    from rayagg import files

    real, damaged = pq.read_table, []

    def guarded(source, *args, **kwargs):
        data = bytes(source.read() if hasattr(source, "read") else source)
        if not (len(data) >= 12 and data[:4] == data[-4:] == b"PAR1"):
            damaged.append(len(data))
        return real(files.pa.BufferReader(data), *args, **kwargs)

    monkeypatch.setattr(files.pq, "read_table", guarded)
    yield
    assert not damaged, f"damaged bytes reached pyarrow: files of {damaged} bytes"


@pytest.mark.parametrize("name", ["events.parquet", "metrics.parquet"])
@pytest.mark.parametrize("truncation", list(TRUNCATIONS))
def test_status_of_a_truncated_parquet_file_is_exit_2_naming_it(run, name, truncation,
                                                                 pyarrow_sees_only_whole_files):
    with_events(run, "edge-0 declared dead: killed")
    path = run / name
    data = path.read_bytes()
    path.write_bytes(data[:TRUNCATIONS[truncation](len(data))])
    result = invoke("status", run)
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"{path} is not readable Parquet (truncated or corrupt): it " in result.output  # the reader's own check
    assert "Traceback" not in result.output


def test_a_parquet_file_whose_footer_does_not_fit_is_refused_before_pyarrow(tmp_path,
                                                                          pyarrow_sees_only_whole_files):
    from rayagg.files import read_parquet

    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 8 + (1000).to_bytes(4, "little") + b"PAR1")
    with pytest.raises(CheckpointError, match=r"x.parquet is not readable Parquet \(truncated or corrupt\): its footer length \(1000 bytes\)"):
        read_parquet(path, "metrics file")


def test_a_truncated_events_file_is_exit_2_in_a_real_process_every_time(run):
    """The crash the guard prevents was an abort in pyarrow (exit 134): a real process."""
    with_events(run, "edge-0 declared dead: killed")
    path = run / "events.parquet"
    data = path.read_bytes()
    rayagg = pathlib.Path(sys.executable).parent / "rayagg"
    for truncate in TRUNCATIONS.values():
        path.write_bytes(data[:truncate(len(data))])
        done = subprocess.run([str(rayagg), "status", str(run)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"{path} is not readable Parquet (truncated or corrupt): it " in done.stderr


# ------------------------------------------------------------------ status verifies the last checkpoint


def a_checkpoint(run: pathlib.Path) -> pathlib.Path:
    state = RunState.load(run)
    return run / state.checkpoints["edge-0"]


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip a byte"])
def test_status_says_when_the_last_checkpoint_is_damaged_and_which_file(run, damage):
    path = a_checkpoint(run)
    data = bytearray(path.read_bytes())
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    before = snapshot(run)
    result = invoke("status", run)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "last checkpointed round: 2 (damaged:" in result.output and str(path) in result.output
    assert "the checkpoint of round 2 is damaged" in result.output
    assert snapshot(run) == before


def test_status_of_a_whole_checkpoint_says_it_was_verified(run):
    result = invoke("status", run)
    assert result.exit_code == 0, result.output
    assert "last checkpointed round: 2 (verified:" in result.output


def test_past_the_hashing_budget_status_checks_sizes_and_says_so(run, monkeypatch):
    monkeypatch.setattr(sys.modules["rayagg.cli.status"], "HASHED_BYTES", 0)
    path = a_checkpoint(run)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only a SHA-256 would tell
    path.write_bytes(bytes(data))
    result = invoke("status", run)
    assert result.exit_code == 0, result.output
    assert "sizes checked, SHA-256 not" in result.output and "--resume` verifies" in result.output
    path.write_bytes(bytes(data[:-1]))
    result = invoke("status", run)
    assert result.exit_code == 2 and str(path) in result.output and "bytes" in result.output
