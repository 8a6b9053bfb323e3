"""Submitting rayagg as a Ray Job to a separately started Ray head (`ray start`)."""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from conftest import packed

pytestmark = pytest.mark.ray


ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head in its own process group, stopped by group id (never `ray stop`,
    which would kill every Ray process of the user)."""
    port, dashboard = free_port(), free_port()
    # A short temp dir: Ray's socket paths under pytest's tmp_path exceed the 107-byte limit.
    temp_dir = tempfile.mkdtemp(prefix="rg-", dir="/tmp")
    # The job's `python` is the first on the head's PATH: this environment's.
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         # The job agent's port too: at its default (52365) it clashes with any other head here.
         f"--dashboard-agent-listen-port={free_port()}",
         f"--temp-dir={temp_dir}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:  # gcs_server ignores SIGTERM for long; 5 s is enough for the rest to flush logs
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def rayagg(env, *args, timeout_s=60):
    return subprocess.run([str(BIN / "rayagg"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s)


# Several `rayagg` commands in one process: each process pays for importing Ray (seconds).
MANY = """
import json, sys
from click.testing import CliRunner
from rayagg.cli import main
results = [CliRunner().invoke(main, args) for args in json.loads(sys.argv[1])]
print(json.dumps([[r.exit_code, r.output] for r in results]))
"""


def rayagg_many(env, *commands):
    """(exit code, stdout and stderr) of each command, run one after the other in one process."""
    done = subprocess.run([sys.executable, "-c", MANY, json.dumps(commands)], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def wait_for_job_server(address, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while True:  # the dashboard takes a few seconds to answer
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=5).close()
            return
        except urllib.error.HTTPError:  # it answers (401: the token is the client's business)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_tiny_run_submitted_as_a_ray_job(ray_head, quick_config, tmp_path):
    address, env = ray_head
    config = tmp_path / "quick.yaml"
    # The test is about submitting a job: the quick tree (a CNN cloud, fewer samples), its
    # edges and devices packed (3 processes, not 7). Its autoencoder cache is the session's.
    config.write_text(packed(quick_config, edge=2, device=4).to_yaml())
    out = tmp_path / "run"
    wait_for_job_server(address)
    submitted = rayagg(env, "submit", str(config), "--address", address, "--working-dir", str(ROOT),
                       "--rounds", "1", "--out", str(out), "--wait", timeout_s=400)
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    job_id = submitted.stdout.split("submitted ", 1)[1].split()[0]
    assert "round 1/1" in submitted.stdout and f"job {job_id} SUCCEEDED" in submitted.stdout
    assert (out / "metrics.parquet").is_file()  # the --out the README gives
    assert not (out / "live.json").exists()  # the run ended and said so

    on_head = ["--address", address]
    listed, status, logs, unknown = rayagg_many(
        env, ["jobs", "list", *on_head], ["jobs", "status", job_id, *on_head],
        ["jobs", "logs", job_id, *on_head], ["jobs", "stop", "raysubmit_nosuchjob", *on_head])
    assert listed[1].split()[:2] == [job_id, "SUCCEEDED"] and str(out) in listed[1]
    assert status[0] == 0 and f"{job_id}: SUCCEEDED" in status[1] and "exit code: 0" in status[1]
    assert "round 1/1" in logs[1] and "rayagg: done" in logs[1]
    assert unknown[0] == 2 and "no job 'raysubmit_nosuchjob'" in unknown[1]

