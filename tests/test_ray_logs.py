"""Quiet runs: which of Ray's lines reach the terminal, and where Ray's logs are kept.
Pure unit tests: none starts Ray (ray.init is replaced where connect is exercised)."""
import logging

import pytest
from ray._private import worker as ray_worker

from rayagg.runtime import cluster, ray_logs

pytestmark = pytest.mark.ray


POOL_LARGE = ("WARNING: 8 PYTHON worker processes have been started on node: ab12 with address: "
              "192.0.2.2, which is 4x the maximum expected startup concurrency (2).")
WORKER_DIED = ("A worker died or was killed while executing a task by an unexpected system error. "
               "To troubleshoot the problem, check the logs for the dead worker.")
LOW_MEMORY = ("1 worker(s) were killed due to the node running low on memory. Memory on the node "
              "was 23 GB / 24 GB.\nRefer to the documentation on how to address the out of memory issue")


@pytest.fixture
def shown():
    """Turns quiet mode on with a list as the terminal; restores Ray's own printing after."""
    lines: list[str] = []
    assert ray_logs.quiet(True, lines.append)
    yield lines
    ray_logs.quiet(False)


def test_expected_raylet_notices_are_not_shown():
    assert ray_logs.in_rayagg_words(POOL_LARGE) is None
    assert ray_logs.in_rayagg_words(WORKER_DIED) is None
    assert ray_logs.in_rayagg_words("  \n") is None


def test_low_memory_and_unknown_notices_are_shown_in_rayaggs_words():
    low = ray_logs.in_rayagg_words(LOW_MEMORY)
    assert low.startswith("rayagg: warning: a Ray machine ran low on memory")
    assert "running low on memory" in low and "Refer to" not in low  # the first line only
    assert ray_logs.in_rayagg_words("The node was removed.") == "rayagg: Ray reports: The node was removed."


def test_init_options_forward_worker_output_only_when_verbose():
    assert ray_logs.init_options(False) == {"logging_level": "WARNING", "log_to_driver": False}
    assert ray_logs.init_options(True) == {"logging_level": "WARNING", "log_to_driver": True}


def test_quiet_drops_the_token_auth_notice_only(shown):
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    auth = logging.getLogger(ray_logs.AUTH_LOGGER)
    auth.addHandler(handler)
    # Ray's logging set-up in earlier tests of this process may have disabled or raised it.
    disabled, level = auth.disabled, auth.level
    auth.disabled = False
    auth.setLevel(logging.WARNING)
    try:
        auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=...")
        auth.warning("Token authentication is disabled for this Ray cluster. Anyone with ...")
        ray_logs.quiet(False)
        auth.warning("Token authentication is enabled for this Ray cluster (verbose).")
    finally:
        auth.removeHandler(handler)
        auth.disabled, auth.level = disabled, level
    assert seen == ["Token authentication is disabled for this Ray cluster. Anyone with ...",
                    "Token authentication is enabled for this Ray cluster (verbose)."]


def test_quiet_routes_raylet_notices_and_leaves_worker_lines_to_ray(shown, capsys, tmp_path):
    ray_worker.print_to_stdstream({"pid": "raylet", "lines": [POOL_LARGE, LOW_MEMORY], "is_err": False},
                                  ignore_prefix=False)
    assert len(shown) == 1 and shown[0].startswith("rayagg: warning: a Ray machine ran low on memory")
    ray_worker.print_to_stdstream({"pid": 123, "lines": ["hello from a worker"], "is_err": False,
                                   "ip": "h", "localhost": "h"}, ignore_prefix=True)
    out = capsys.readouterr().out
    assert "hello from a worker" in out and "8 PYTHON worker processes" not in out
    # Held until keep_logs names the file, then written there in full.
    ray_logs.NOTICES.write_to(tmp_path / "notices.log", "# header")
    written = (tmp_path / "notices.log").read_text()
    assert written.startswith("# header\n") and "8 PYTHON worker processes" in written
    assert "Refer to the documentation" in written


def test_verbose_restores_rays_own_printing():
    original = getattr(ray_worker.print_to_stdstream, "__wrapped__", ray_worker.print_to_stdstream)
    ray_logs.quiet(True, lambda line: None)
    ray_logs.quiet(True, lambda line: None)  # twice: still one wrapper around Ray's function
    assert ray_worker.print_to_stdstream.__wrapped__ is original
    ray_logs.quiet(False)
    assert ray_worker.print_to_stdstream is original


def test_keep_logs_links_the_session_log_directory(tmp_path, monkeypatch):
    sessions = [tmp_path / "session_1" / "logs", tmp_path / "session_2" / "logs"]
    for logs in sessions:
        logs.mkdir(parents=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for logs in sessions:  # a resumed run links its new session
        monkeypatch.setattr(ray_logs, "session_logs_dir", lambda logs=logs: logs)
        link = ray_logs.keep_logs(run_dir)
        assert link == run_dir / "ray-logs" and link.resolve() == logs.resolve()
    notices = (run_dir / ray_logs.NOTICES_FILE).read_text().splitlines()
    assert [line.endswith(str(logs)) for line, logs in zip(notices, sessions)] == [True, True]
    assert sorted(p.name for p in run_dir.iterdir()) == ["ray-logs", ray_logs.NOTICES_FILE]  # no temporary link
    ray_logs.NOTICES.write_to(None)


def test_keep_logs_leaves_other_paths_alone(tmp_path, monkeypatch):
    (tmp_path / "logs").mkdir()
    monkeypatch.setattr(ray_logs, "session_logs_dir", lambda: None)
    assert ray_logs.keep_logs(tmp_path) is None and not (tmp_path / "ray-logs").exists()
    (tmp_path / "ray-logs").mkdir()  # not a link: never replaced
    monkeypatch.setattr(ray_logs, "session_logs_dir", lambda: tmp_path / "logs")
    assert ray_logs.keep_logs(tmp_path) is None and not (tmp_path / "ray-logs").is_symlink()
    ray_logs.NOTICES.write_to(None)


@pytest.mark.parametrize("verbose", [False, True])
def test_connect_passes_the_logging_options(monkeypatch, verbose):
    calls = []
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: calls.append(kwargs))
    try:
        assert cluster.connect(None, verbose=verbose) is True
        quiet = hasattr(ray_worker.print_to_stdstream, "__wrapped__")
    finally:
        ray_logs.quiet(False)
    assert calls == [{"address": "local", "include_dashboard": False, "logging_level": "WARNING",
                      "log_to_driver": verbose}]
    assert quiet is not verbose
