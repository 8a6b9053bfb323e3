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

import pytest
from conftest import packed

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


def ray_job(env, *args, timeout_s=60):
    return subprocess.run([str(BIN / "ray"), "job", *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def test_tiny_run_as_a_ray_job(ray_head, quick_config, tmp_path):
    address, env = ray_head
    config = tmp_path / "quick.yaml"
    # The test is about submitting a job: the quick tree (a CNN cloud, fewer samples), its
    # edges and devices packed (3 processes, not 7). Its autoencoder cache is the session's.
    config.write_text(packed(quick_config, edge=2, device=4).to_yaml())
    out = tmp_path / "run"
    deadline = time.monotonic() + 60
    while True:  # the dashboard takes a few seconds to answer
        listed = ray_job(env, "list", "--address", address)
        if listed.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert listed.returncode == 0, listed.stderr
    submitted = ray_job(env, "submit", "--address", address, "--working-dir", str(ROOT),
                        "--runtime-env-json", json.dumps({"excludes": [".venv", "runs", ".git"]}),
                        "--", "python", "jobs/fedagg_job.py", str(config), "--rounds", "1",
                        "--out", str(out), timeout_s=400)
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    assert "round 1/1" in submitted.stdout
    assert (out / "metrics.parquet").is_file()
