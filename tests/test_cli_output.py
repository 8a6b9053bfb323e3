"""The command line's `--set KEY=VALUE` settings and `--json` output (docs/config.md,
"Settings from the command line"; docs/running.md, "Machine-readable output"), without Ray."""
import json
import pathlib
import shlex
import shutil
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from rayagg.cli import main
from rayagg.config import load_config
from rayagg.core.events import Event
from rayagg.rundir.events import write_events
from rayagg.rundir.manifest import RunState

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"
TINY = CONFIGS / "tiny.yaml"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------ --set

def test_set_changes_what_check_prints():
    plain = invoke("check", TINY)
    assert plain.exit_code == 0, plain.output
    assert "device: 4 x cnn" in plain.output and "balance: none" in plain.output
    changed = invoke("check", TINY, "--set", "tree.tiers.2.fanout=3", "--set", "balance.policy=least-busy")
    assert changed.exit_code == 0, changed.output
    assert "device: 6 x cnn" in changed.output and "balance: least-busy" in changed.output


@pytest.mark.parametrize("setting, message", [
    ("tree.tiers.9.count=1", "rayagg: error: --set tree.tiers.9.count=1: tree.tiers has 3 entries"),
    ("training.learnrate=0.1", "training.learnrate: unknown key"),
    ("training.lr", "rayagg: error: --set training.lr: expected KEY=VALUE"),
    ("training.lr=", "rayagg: error: --set training.lr=: empty value"),
])
def test_a_bad_setting_is_one_error_naming_it_and_exit_2(setting, message):
    result = invoke("check", TINY, "--set", setting)
    assert result.exit_code == 2 and message in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


@pytest.mark.parametrize("command", [["run"], ["check"], ["submit"], ["bench"], ["balance-test"], ["compare"]])
def test_every_command_that_reads_a_config_takes_set(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "--set KEY=VALUE" in result.output


@pytest.mark.parametrize("command", [["bench"], ["balance-test"], ["compare", "--local"]])
def test_the_tools_refuse_a_bad_setting_before_anything_runs(command, tmp_path):
    result = invoke(*command, TINY, "--set", "tree.tiers.3.model=cnn", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "--set tree.tiers.3.model=cnn: tree.tiers has 3 entries" in result.output
    assert not (tmp_path / "out").exists()


def test_compare_sets_the_variants_too(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["tree"]["tiers"] = raw["tree"]["tiers"][:2]
    variant = tmp_path / "two-tiers.yaml"
    variant.write_text(yaml.safe_dump(raw))
    assert len(load_config(variant).tree.tiers) == 2
    result = invoke("compare", TINY, "--local", "--methods", "local", "--variant", f"two={variant}",
                    "--set", "tree.tiers.2.model=cnn", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert f"--variant 'two={variant}'" in result.output and "tree.tiers has 2 entries" in result.output


def test_submit_sends_the_config_as_changed(tmp_path, monkeypatch):
    from rayagg.client import jobs

    sent = []
    monkeypatch.setattr(jobs, "connect", lambda address: object())
    monkeypatch.setattr(jobs, "submit", lambda client, job: sent.append(job) or "raysubmit_1")
    result = invoke("submit", TINY, "--address", "http://127.0.0.1:1", "--out", "/shared/run",
                    "--set", "training.lr=0.5", "--rounds", "2", "--set", "training.rounds=9")
    assert result.exit_code == 0, result.output
    from rayagg.config import parse_config_text

    shipped = parse_config_text(sent[0].runtime_env["env_vars"][jobs.CONFIG_ENV])
    assert shipped.training.lr == 0.5 and shipped.training.rounds == 2  # --rounds after --set
    resumed = invoke("submit", "--resume", "/shared/run", "--address", "http://127.0.0.1:1",
                     "--set", "runtime.round_timeout_s=60")
    assert resumed.exit_code == 0, resumed.output
    entrypoint = shlex.split(sent[1].entrypoint)  # the run's own config, changed on the cluster
    assert entrypoint[:6] == ["python", "-m", "rayagg", "run", "--resume", "/shared/run"]
    assert entrypoint[entrypoint.index("--set") + 1] == "runtime.round_timeout_s=60"
    bad = invoke("submit", "--resume", "/shared/run", "--address", "http://127.0.0.1:1", "--set", "x")
    assert bad.exit_code == 2 and "--set x: expected KEY=VALUE" in bad.output and len(sent) == 2


@pytest.fixture(scope="module")
def set_run(quick_config, tmp_path_factory):
    """`rayagg run CONFIG --local --set training.rounds=1 --set training.lr=0.05 --out RUN`
    (quick_config has 3 rounds and lr 0.02). Returns (config file, run, output)."""
    folder = tmp_path_factory.mktemp("set-run")
    config = folder / "quick.yaml"
    config.write_text(quick_config.to_yaml())
    run = folder / "run"
    result = invoke("run", config, "--local", "--set", "training.rounds=1", "--set", "training.lr=0.05",
                    "--out", run)
    assert result.exit_code == 0, result.output
    return config, run, result.output


def test_run_saves_the_config_as_set(set_run, quick_config):
    _, run, output = set_run
    assert "round 1/1" in output and "round 2/" not in output
    saved = load_config(run / "config.yaml")
    assert saved.training.rounds == 1 and saved.training.lr == 0.05
    assert saved == quick_config.with_changes(training={"rounds": 1, "lr": 0.05})


def test_a_resume_applies_settings_to_the_runs_config_and_rounds_after_them(set_run, tmp_path):
    _, run, _ = set_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    refused = invoke("run", "--resume", copy, "--local", "--rounds", "2", "--set", "training.lr=0.5")
    assert refused.exit_code == 2 and "with --set training.lr=0.5: CONFIG differs" in refused.output
    assert "in training" in refused.output
    # --rounds wins over --set; the run's lr stays as set when it was made
    resumed = invoke("run", "--resume", copy, "--local", "--set", "training.rounds=1",
                     "--set", "supervision.checkpoint_every=1", "--rounds", "2")
    assert resumed.exit_code == 0, resumed.output
    assert "round 2/2" in resumed.output
    saved = load_config(copy / "config.yaml")
    assert saved.training.rounds == 2 and saved.training.lr == 0.05 and saved.supervision.checkpoint_every == 1


# ------------------------------------------------------------------ --json

CHECK_KEYS = {"name", "method", "data", "tiers", "balance", "emulation", "tracking"}
TIER_KEYS = {"name", "count", "model", "nodes_per_actor", "hosts", "resources", "elastic"}


def test_check_json_is_one_document_with_the_documented_keys():
    result = invoke("check", TINY, "--json", "--set", "tree.tiers.2.nodes_per_actor=3")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == CHECK_KEYS
    assert document["name"] == "tiny" and document["method"]["name"] == "fedagg"
    assert document["data"]["dataset"] == "fashion-mnist" and document["data"]["source"] == "driver"
    assert [tier["name"] for tier in document["tiers"]] == ["cloud", "edge", "device"]
    assert all(set(tier) == TIER_KEYS for tier in document["tiers"])
    device = document["tiers"][2]
    assert device["count"] == 4 and device["model"] == "cnn" and device["nodes_per_actor"] == 3
    assert device["hosts"] == 2 and device["resources"]["num_cpus"] == 0.1 and device["elastic"] is None
    assert document["balance"]["policy"] == "none" and document["balance"]["rebalances"] is False


def test_check_json_says_an_elastic_range():
    document = json.loads(invoke("check", CONFIGS / "elastic.yaml", "--json").stdout)
    elastic = document["tiers"][-1]["elastic"]
    assert {"min_devices", "max_devices"} <= set(elastic) and elastic["min_devices"] <= elastic["max_devices"]


def test_check_json_errors_stay_on_stderr():
    result = invoke("check", TINY, "--json", "--set", "tree.tiers.9.count=1")
    assert result.exit_code == 2 and result.stdout == "" and "tree.tiers has 3 entries" in result.stderr


STATUS_KEYS = {"run_dir", "name", "state", "round", "rounds", "rounds_measured", "checkpoint", "verified", "live",
               "tiers", "dead", "left", "hosts", "load", "events"}


def test_status_json_of_a_finished_run(set_run):
    _, run, _ = set_run
    result = invoke("status", run, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == STATUS_KEYS
    assert document["run_dir"] == str(run) and document["name"] == "tiny"
    assert document["state"] == "done" and document["round"] == 1 and document["rounds"] == 1
    assert document["rounds_measured"] == 1 and document["verified"] is True and document["live"] is None
    assert document["checkpoint"]["round"] == 1 and document["checkpoint"]["hashed"] is True
    assert document["checkpoint"]["files"] > 0 and document["checkpoint"]["damage"] is None
    assert list(document["tiers"]) == ["cloud", "edge", "device"]
    assert document["tiers"]["device"]["nodes"] == 4
    assert all(0 <= tier["accuracy"] <= 1 for tier in document["tiers"].values())
    assert document["dead"] == [] and document["left"] == [] and document["events"] == []
    assert [host["name"] for host in document["hosts"]][:2] == ["cloud-0", "edge-0"]
    assert document["load"]["tier"] == "edge" and len(document["load"]["nodes"]) == 2


def test_status_json_of_a_damaged_checkpoint_prints_it_then_exits_2(set_run, tmp_path):
    _, run, _ = set_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    checkpoint = next((copy / "checkpoints").rglob("*.pt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1] + b"x")
    result = invoke("status", copy, "--json")
    assert result.exit_code == 2 and "is damaged" in result.stderr
    document = json.loads(result.stdout)
    assert document["verified"] is False and document["checkpoint"]["damage"]


def test_status_json_names_dead_nodes_and_events(tmp_path):
    RunState(3, {"cloud-0": None, "edge-0": "cloud-0"}, ["edge-1"]).save(tmp_path)
    write_events([Event.now(2, "reparent", "device-2", "device-2 moved edge-1 -> edge-0 (edge-1 died)")],
                 tmp_path / "events.parquet")
    result = invoke("status", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["dead"] == ["edge-1"] and document["round"] == 3 and document["state"] == "stopped"
    assert document["name"] is None and document["rounds"] is None and document["hosts"] == []
    [event] = document["events"]
    assert event["kind"] == "reparent" and event["node"] == "device-2" and event["round"] == 2
    assert "edge-1 died" in event["detail"] and "T" in event["at"]


def test_status_json_takes_no_watch(tmp_path):
    RunState(1, {}, []).save(tmp_path)
    result = invoke("status", tmp_path, "--json", "--watch")
    assert result.exit_code == 2 and "takes no --watch" in result.output


def _job(job_id, status, start_time, run_dir=None, message=None):
    return SimpleNamespace(submission_id=job_id, job_id=None, status=SimpleNamespace(value=status),
                           start_time=start_time, metadata={"rayagg": "run", "run_dir": run_dir} if run_dir else {},
                           entrypoint=f"python -m rayagg run --out {run_dir}", message=message)


class FakeJobClient:
    def __init__(self, jobs):
        self.jobs = jobs

    def list_jobs(self):
        return self.jobs


@pytest.fixture
def job_client(monkeypatch):
    from rayagg.client import jobs

    client = FakeJobClient([_job("raysubmit_b", "FAILED", 1_700_000_100_000, "/runs/b", "exit code 2"),
                            _job("raysubmit_a", "SUCCEEDED", 1_700_000_000_000, "/runs/a", "done"),
                            _job("raysubmit_c", "PENDING", None, "/runs/c"),
                            _job("other", "RUNNING", 1_700_000_200_000)])
    monkeypatch.setattr(jobs, "connect", lambda address: client)
    return client


def test_jobs_list_json(job_client):
    result = invoke("jobs", "list", "--json", "--address", "http://127.0.0.1:1")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [job["job_id"] for job in document] == ["raysubmit_c", "raysubmit_a", "raysubmit_b"]
    assert all(set(job) == {"job_id", "status", "start_time", "run_dir", "entrypoint", "message"}
               for job in document)
    pending, done, failed = document
    assert pending["start_time"] is None and pending["status"] == "PENDING" and pending["message"] is None
    assert done["run_dir"] == "/runs/a" and done["status"] == "SUCCEEDED" and done["message"] == "done"
    assert done["entrypoint"] == "python -m rayagg run --out /runs/a"
    import datetime

    assert datetime.datetime.fromisoformat(failed["start_time"]).timestamp() == 1_700_000_100
    every = json.loads(invoke("jobs", "list", "--json", "--all", "--address", "http://127.0.0.1:1").stdout)
    assert len(every) == 4 and every[-1]["run_dir"] is None


def test_jobs_list_json_of_no_jobs_is_an_empty_list(monkeypatch):
    from rayagg.client import jobs

    monkeypatch.setattr(jobs, "connect", lambda address: FakeJobClient([]))
    result = invoke("jobs", "list", "--json", "--address", "http://127.0.0.1:1")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
