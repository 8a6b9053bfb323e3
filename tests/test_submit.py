"""What `rayagg submit` sends and how `rayagg jobs` reads a job (rayagg/client/jobs.py), without Ray."""
import shlex
import socket
import time
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from rayagg.client import jobs
from rayagg.cli import main
from rayagg.config import parse_config_text
from rayagg.errors import JobError


pytestmark = pytest.mark.ray


def test_a_new_run_carries_its_config_and_an_absolute_run_dir(tiny_config):
    config = tiny_config.with_changes(output={"base_dir": "/shared/runs"})
    run_dir = jobs.cluster_run_dir(config, None, "20261128-120000")
    assert run_dir == f"/shared/runs/{config.name}-20261128-120000"
    job = jobs.submission(config, run_dir, rounds=3, working_dir=".", pip=("rayagg",))
    assert shlex.split(job.entrypoint) == ["python", "-m", "rayagg", "run", "--config-from-env", "--out",
                                           run_dir, "--address", "auto", "--rounds", "3"]
    assert parse_config_text(job.runtime_env["env_vars"][jobs.CONFIG_ENV]) == config
    assert job.runtime_env["working_dir"].startswith("/") and "runs" in job.runtime_env["excludes"]
    assert job.runtime_env["pip"] == ["rayagg"]
    assert job.metadata == {"rayagg": "run", "run_dir": run_dir, "config": config.name}


def test_a_relative_base_dir_goes_to_the_home_on_the_cluster_not_the_job_dir(tiny_config):
    assert tiny_config.output.base_dir == "runs"
    assert jobs.cluster_run_dir(tiny_config, None, "s") == f"~/rayagg-runs/{tiny_config.name}-s"
    assert jobs.cluster_run_dir(tiny_config, "~/x y", "s") == "~/x y"


def test_a_resume_reads_the_runs_own_config_on_the_cluster():
    job = jobs.submission(None, "/shared/runs/a", resume=True, verbose=True)
    assert shlex.split(job.entrypoint) == ["python", "-m", "rayagg", "run", "--resume", "/shared/runs/a",
                                           "--address", "auto", "--verbose"]
    assert job.runtime_env == {}


@pytest.mark.parametrize("args, message", [
    (["--out", "runs/x"], "--out 'runs/x' is relative"),
    (["--resume", "runs/x"], None),  # with CONFIG too: a usage error
])
def test_submit_refuses_what_cannot_mean_the_same_on_the_cluster(tiny_config, tmp_path, args, message):
    config = tmp_path / "c.yaml"
    config.write_text(tiny_config.to_yaml())
    result = CliRunner().invoke(main, ["submit", str(config), "--address", "http://127.0.0.1:1", *args])
    assert result.exit_code == 2
    assert (message or "give CONFIG, or --resume RUN_DIR") in result.output


def test_an_unreachable_job_server_fails_fast_naming_it():
    started = time.monotonic()
    result = CliRunner().invoke(main, ["jobs", "list", "--address", "127.0.0.1:1"])
    assert result.exit_code == 2 and "cannot reach Ray's job server at http://127.0.0.1:1" in result.output
    assert time.monotonic() - started < jobs.CONNECT_TIMEOUT_S
    with pytest.raises(JobError, match="not a job server"):
        jobs.job_server_url("ray://head:10001")


def test_default_address_follows_rays_environment(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")  # a GCS address: not the job server
    assert jobs.default_address() == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert jobs.default_address() == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    assert jobs.default_address() == "http://api:8265"


@pytest.mark.parametrize("status, driver_exit_code, expected", [
    ("SUCCEEDED", 0, 0), ("FAILED", 2, 2), ("FAILED", None, 1), ("STOPPED", None, 143), ("STOPPED", 130, 130)])
def test_wait_exits_zero_only_for_success(status, driver_exit_code, expected):
    assert jobs.exit_code(SimpleNamespace(status=status, driver_exit_code=driver_exit_code)) == expected


def test_a_port_that_accepts_but_never_answers_fails_naming_it(monkeypatch):
    # Ray's job client sets no timeout: without rayagg's own probe this waited forever.
    monkeypatch.setattr(jobs, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nothing ever answers
        address = "127.0.0.1:%d" % silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(JobError, match=f"job server at http://{address} did not answer within 0.5 s"):
            jobs.connect(address)
    assert time.monotonic() - started < 5
