"""Run directories on object storage (rayagg/storage.py) against a real S3 endpoint: moto's
standalone server, started here on a free port (no network needed), with test credentials
in the environment as pyarrow reads them.

Without Ray: the storage layer (objects written whole, read, listed, deleted), the
run-directory checks and the start-up probe on s3://; the tiny tree in process with RUN_DIR
on s3://, equal to the same run on a local path; a stop then a resume from s3:// equal to
the uninterrupted run; a flipped byte and a missing object refused naming the object; the
server stopped mid-run (a clear error in seconds, the last complete cut intact) and a
server that never answers (an error within the timeouts). On Ray, an emulated second
machine with neither the data set nor RUN_DIR (on s3://) running every host, equal to the
in-process run on a local path.
"""
import logging
import socket
import time

import pytest
from click.testing import CliRunner

from rayagg import storage
from rayagg.cli import main
from rayagg.core.schedule import SAVE
from rayagg.driver import LocalRunner
from rayagg.errors import CheckpointError, RayaggError, RunDirError
from rayagg.files import sha256_bytes, verified_bytes, write_atomic
from rayagg.learning.plan import make_plan
from rayagg.loop import execute
from rayagg.observe import RunObserver
from rayagg.rundir.directory import check_new_run_dir, clear_run_dir, end_probe, probe_run_dir, start_probe
from rayagg.rundir.manifest import RunState
from rayagg.rundir.metrics import read_metrics
from rayagg.rundir.resume import load_for_resume, verify_cut
from rayagg.stopping import StopSignals, Stopped
from rayagg.storage import StorePath, as_path
from test_resume import CASES, StopAt, measured

BUCKET = "rayagg-test"
MB = 2**20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3:
    """A moto S3 server in this process on ``port``; stopping and starting it again keeps
    its objects (moto holds them in this process)."""

    def __init__(self, port: int):
        from moto.server import ThreadedMotoServer

        self.port, self.endpoint = port, f"http://127.0.0.1:{port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

    def start(self):
        self._server.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "moto did not start"
                time.sleep(0.05)

    def stop(self):
        self._server.stop()


@pytest.fixture(scope="module")
def s3():
    """The server, the test credentials and endpoint in os.environ (what pyarrow and Ray's
    workers, started later by this process, read), and the bucket, created with pyarrow."""
    import pyarrow.fs as pafs

    server = S3(free_port())
    server.start()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": server.endpoint}.items():
            patch.setenv(key, value)
        storage._filesystem.cache_clear()  # a store opened under another endpoint
        pafs.S3FileSystem(endpoint_override=server.endpoint, allow_bucket_creation=True).create_dir(BUCKET)
        yield server
        storage._filesystem.cache_clear()
    server.stop()


@pytest.fixture
def prefix(s3, request):
    """A fresh prefix of the bucket for one test."""
    return as_path(f"s3://{BUCKET}/{request.node.name.replace('[', '-').strip(']')}-{time.monotonic_ns()}")


# ---- the storage layer ----

def test_uris_and_paths_are_told_apart():
    assert isinstance(as_path("s3://b/runs/x"), StorePath) and isinstance(as_path("gs://b/x"), StorePath)
    assert str(as_path("file:///tmp/run")) == "/tmp/run" and str(as_path("runs/x")) == "runs/x"
    run = as_path("s3://b/runs/x?endpoint_override=localhost:9000")
    assert str(run / "checkpoints" / "round-0001") == "s3://b/runs/x/checkpoints/round-0001?endpoint_override=localhost:9000"
    assert (run / "bridge/cloud-0.parquet").relative_to(run).as_posix() == "bridge/cloud-0.parquet"
    assert run.name == "x" and run.parent == as_path("s3://b/runs?endpoint_override=localhost:9000")
    with pytest.raises(RunDirError, match="hdfs://"):
        as_path("hdfs://namenode/runs")
    with pytest.raises(RunDirError, match="no bucket"):
        as_path("s3:///runs")


def test_objects_are_written_whole_read_listed_and_deleted(prefix):
    assert not prefix.exists() and list(prefix.iterdir()) == []
    (prefix / "a" / "one.pt").write_bytes(b"1" * 10)
    (prefix / "a" / "two.pt").write_bytes(b"2")
    (prefix / "b.json").write_bytes(b"{}")
    assert prefix.is_dir() and (prefix / "a").is_dir() and (prefix / "b.json").is_file()
    assert sorted(p.name for p in prefix.iterdir()) == ["a", "b.json"]
    assert sorted(p.name for p in prefix.rglob("*.pt")) == ["one.pt", "two.pt"]
    assert [p.name for p in prefix.glob("b*")] == ["b.json"]
    assert (prefix / "a" / "one.pt").stat().st_size == 10
    (prefix / "a" / "one.pt").write_bytes(b"short")  # a rewrite replaces the whole object
    assert (prefix / "a" / "one.pt").read_bytes() == b"short"
    (prefix / "b.json").unlink()
    with pytest.raises(FileNotFoundError, match=str(prefix / "b.json")):
        (prefix / "b.json").read_bytes()
    (prefix / "b.json").unlink(missing_ok=True)
    storage.remove_tree(prefix / "a")
    assert not (prefix / "a").exists()


def test_durable_writes_and_verified_reads_name_the_object(prefix):
    path = prefix / "checkpoints" / "round-0001" / "edge-0.pt"
    write_atomic(path, b"weights")
    assert verified_bytes(path, sha256_bytes(b"weights")) == b"weights"
    write_atomic(path, b"weightz")  # a flipped byte
    with pytest.raises(CheckpointError, match=f"{path} is corrupt"):
        verified_bytes(path, sha256_bytes(b"weights"), "checkpoint")
    path.unlink()
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {path}"):
        verified_bytes(path, None, "checkpoint")


def test_new_run_checks_and_overwrite_clear_only_the_runs_prefix(prefix):
    check_new_run_dir(prefix)  # nothing there yet
    (prefix / "notes.txt").write_bytes(b"not a run")
    with pytest.raises(RunDirError, match="holds no rayagg run"):
        check_new_run_dir(prefix, overwrite=True)
    run, neighbour = prefix / "run", prefix / "run2"
    (run / "config.yaml").write_bytes(b"name: x\n")
    (run / "checkpoints" / "round-0001" / "cloud-0.pt").write_bytes(b"x")
    (neighbour / "config.yaml").write_bytes(b"name: y\n")
    with pytest.raises(RunDirError, match="already holds a run"):
        check_new_run_dir(run)
    check_new_run_dir(run, overwrite=True)
    clear_run_dir(run)
    assert list(run.iterdir()) == [] and (neighbour / "config.yaml").is_file() and (prefix / "notes.txt").is_file()


def test_probe_sees_the_drivers_token_and_refuses_another_prefix(prefix):
    token = start_probe(prefix)
    assert probe_run_dir(str(prefix), token, "edge-0 on b") is None
    answer = probe_run_dir(str(prefix / "elsewhere"), token, "edge-0 on b")
    assert answer.startswith("edge-0 on b does not see") and "another directory there" in answer
    end_probe(prefix)
    assert list(prefix.iterdir()) == []  # the probe leaves nothing behind


def test_a_missing_bucket_is_refused_before_anything_starts(s3):
    missing = as_path("s3://no-such-bucket/run")
    with pytest.raises(RunDirError, match="cannot create or write the run directory s3://no-such-bucket/run"):
        check_new_run_dir(missing)


def test_a_server_that_never_answers_is_an_error_within_the_timeouts(monkeypatch):
    """A store that accepts connections and never answers: an error, not a hang."""
    listener = socket.create_server(("127.0.0.1", 0))  # accepts into its backlog, never replies
    monkeypatch.setattr(storage, "REQUEST_TIMEOUT_S", 1.0)
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 2)
    storage._filesystem.cache_clear()
    try:
        port = listener.getsockname()[1]
        path = as_path(f"s3://silent/run/state.json?endpoint_override=127.0.0.1:{port}&scheme=http")
        started = time.monotonic()
        with pytest.raises(CheckpointError, match="s3://silent/run/state.json"):
            verified_bytes(path, None, "manifest")
        assert time.monotonic() - started < 20
    finally:
        listener.close()
        storage._filesystem.cache_clear()


# ---- runs with RUN_DIR on s3:// ----

@pytest.fixture(scope="module")
def quick_plan(quick_config, tiny_dataset):
    return make_plan(quick_config, tiny_dataset)


@pytest.fixture(scope="module")
def uninterrupted_local(quick_plan, tiny_dataset, tmp_path_factory):
    """The quick tree in process on a local path: what every s3:// run must equal."""
    return measured(execute(LocalRunner(quick_plan, tiny_dataset), tmp_path_factory.mktemp("local")))


@pytest.fixture(scope="module")
def run_on_s3(s3, quick_plan, tiny_dataset):
    """The same run with RUN_DIR on s3://: (its RUN_DIR, what it measured)."""
    out = as_path(f"s3://{BUCKET}/runs/quick")
    return out, measured(execute(LocalRunner(quick_plan, tiny_dataset), str(out)))


def test_a_run_on_s3_writes_the_same_run_as_on_a_local_path(run_on_s3, uninterrupted_local, quick_plan):
    out, records = run_on_s3
    assert records == uninterrupted_local
    assert measured(read_metrics(out / "metrics.parquet")) == uninterrupted_local
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.parquet", "accuracy.png", "state.json",
                                               "checkpoints"}
    state = RunState.load(out)
    assert state.round == 3 and set(state.checkpoints) == set(quick_plan.tree.nodes)
    assert verify_cut(state, out).hashed
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["round-0003"]  # older cuts pruned
    result = CliRunner().invoke(main, ["status", str(out)])
    assert result.exit_code == 0 and "last checkpointed round: 3 (verified" in result.output, result.output


def test_stop_then_resume_from_s3_equals_the_uninterrupted_run(prefix, quick_plan, tiny_dataset,
                                                               uninterrupted_local):
    """A second signal while round 2's node files are written: the cut is abandoned,
    its objects stay unlisted, the resume continues after round 0 and they are gone
    once a newer cut commits."""
    point, trigger, number, _, resumes_after = CASES["twice during a checkpoint"]
    stop = StopSignals(echo=lambda line: None)
    with pytest.raises(Stopped):
        execute(LocalRunner(quick_plan, tiny_dataset), prefix, stop=stop,
                observers=[StopAt(quick_plan, stop, point, trigger, number)])
    assert [p.name for p in (prefix / "checkpoints").iterdir()] == ["round-0002"]  # written, not listed
    state = load_for_resume(str(prefix), quick_plan)
    assert state.round == resumes_after == 0 and not state.checkpoints
    records = execute(LocalRunner(quick_plan, tiny_dataset), prefix, resume=state)
    assert measured(records) == uninterrupted_local
    # what the stop left unlisted (a cut half-written) is gone once a newer cut commits
    assert [p.name for p in (prefix / "checkpoints").iterdir()] == ["round-0003"]


def copy_run(source: StorePath, target: StorePath) -> None:
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source).as_posix()).write_bytes(path.read_bytes())


def test_a_flipped_byte_or_a_missing_object_is_refused_naming_it(run_on_s3, prefix, quick_plan):
    out, _ = run_on_s3
    copy_run(out, prefix)
    state = RunState.load(prefix)
    checkpoint, _ = state.located(quick_plan.tree.root, prefix)
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{checkpoint} is corrupt"):
        verify_cut(state, prefix)
    result = CliRunner().invoke(main, ["run", "--resume", str(prefix), "--rounds", "4", "--local"])
    assert result.exit_code == 2 and str(checkpoint) in result.output, result.output
    checkpoint.unlink()
    with pytest.raises(CheckpointError, match=f"{checkpoint} is missing"):
        verify_cut(state, prefix)
    result = CliRunner().invoke(main, ["status", str(prefix)])
    assert result.exit_code == 2 and f"{checkpoint} is missing" in result.output, result.output


class StopServerAt(RunObserver):
    """Stops the S3 server when the first node checkpoint of round ``number`` is written."""

    def __init__(self, server, number):
        self.server, self.number, self.at = server, number, None

    def step_finished(self, round_index, node, call, value):
        if call == SAVE and round_index == self.number and self.at is None:
            self.at = time.monotonic()
            self.server.stop()


def test_the_server_stopped_mid_run_is_a_clear_error_and_the_last_cut_stays(s3, prefix, quick_plan,
                                                                             tiny_dataset):
    stopper = StopServerAt(s3, 2)
    try:
        with pytest.raises(RayaggError, match=f"s3://{BUCKET}/") as info:
            execute(LocalRunner(quick_plan, tiny_dataset), prefix, observers=[stopper])
        failed_after_s = time.monotonic() - stopper.at
    finally:
        s3.start()
    assert failed_after_s < 60, failed_after_s
    assert "Could not connect" in str(info.value) or "cannot" in str(info.value)
    state = RunState.load(prefix)  # the last complete cut, whole
    assert state.round == 0 and verify_cut(state, prefix).files == 0


# ---- on Ray ----

@pytest.fixture
def two_machines(s3):
    """An emulated two-machine cluster, started after ``s3`` so that its workers inherit the
    store's environment: a head for the driver (no CPUs: no host runs there) and a second
    "machine" for every host."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * MB})
    machine = cluster.add_node(num_cpus=2, object_store_memory=100 * MB)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    yield machine
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.ray
def test_a_machine_with_neither_the_data_set_nor_run_dir_runs_its_hosts(two_machines, tiny_config, tiny_plan,
                                                                         tiny_dataset, local_run, tmp_path):
    """Every host on the second machine, RUN_DIR on s3:// and data.root an empty folder (a
    host that looked for the data set would fail, as data.source: local does): the hosts
    get their shards from the driver, probe the store and write their checkpoints to it,
    the driver the rest; the run equals the in-process driver's on a local path."""
    from dataclasses import replace

    from conftest import packed
    from rayagg.errors import DataError
    from rayagg.learning.plan import load_data
    from rayagg.runtime.runner import RayRunner

    empty = tmp_path / "no-data-here"
    empty.mkdir()
    # One round is enough to compare; packed hosts (3 processes, not 7) start sooner.
    config = packed(tiny_config.with_changes(data={"root": str(empty)}, training={"rounds": 1}), edge=2, device=4)
    with pytest.raises(DataError):
        load_data(config)  # what every host would do under data.source: local
    runner = RayRunner(replace(tiny_plan, config=config), dataset=tiny_dataset)
    out = as_path(f"s3://{BUCKET}/two-machines")
    records = execute(runner, out)
    assert {report.ray_node_id for report in runner.placement.values()} == {two_machines.node_id}
    local_records, _, _ = local_run
    scores = lambda rows: {(r.round, r.node): (r.accuracy, r.loss) for r in rows if r.round == 1}
    assert len(scores(records)) == len(tiny_plan.tree.nodes)
    assert scores(records) == scores(local_records)  # the same data, so the same numbers
    state = RunState.load(out)
    assert state.round == 1 and set(state.checkpoints) == set(tiny_plan.tree.nodes)
    assert verify_cut(state, out).hashed
    assert (out / "bridge" / f"{tiny_plan.tree.root}.parquet").is_file() and not (out / "live.json").exists()
