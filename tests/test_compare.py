"""`rayagg compare`: the figures read off synthetic run directories, the table, the JSON and
the plot; the command line's errors (none starts a run); and one in-process comparison of
two methods over two seeds on the tiny tree."""
import json
import pathlib
from dataclasses import asdict

import pytest
from click.testing import CliRunner

from rayagg.cli import main
from rayagg.config import load_config
from rayagg.errors import ConfigError, RunDirError
from rayagg.rundir.manifest import CONFIG_FILE
from rayagg.rundir.metrics import METRICS_FILE, NodeMetrics, read_metrics, write_metrics
from rayagg.rundir.metrics import human_bytes
from rayagg.tools import compare, compare_report

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "configs"
TINY = CONFIGS / "tiny.yaml"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def node_rows(round_index, tier, accuracies, *, round_s=1.0, up=0, down=0):
    parent = {"cloud": "", "edge": "cloud-0", "device": "edge-0"}[tier]
    return [NodeMetrics(round_index, f"{tier}-{i}", tier, acc, 0.5, 0.1, round_s, parent, bytes_up=up,
                        bytes_down=down) for i, acc in enumerate(accuracies)]


def fake_run(run_dir, method, seed, rounds):
    """A run directory holding config.yaml and metrics.parquet; ``rounds`` is a list of
    (cloud accuracy or None, edge accuracies, device accuracies, round seconds, bytes up
    per node, bytes down per node)."""
    run_dir.mkdir(parents=True)
    config = load_config(TINY).with_changes(method={"name": method}, training={"seed": seed})
    (run_dir / CONFIG_FILE).write_text(config.to_yaml())
    records = []
    for n, (cloud, edges, devices, round_s, up, down) in enumerate(rounds, start=1):
        if cloud is not None:
            records += node_rows(n, "cloud", [cloud], round_s=round_s)
        records += node_rows(n, "edge", edges, round_s=round_s, up=up, down=down)
        records += node_rows(n, "device", devices, round_s=round_s, up=up, down=down)
    write_metrics(records, run_dir / METRICS_FILE)
    return run_dir


FEDAGG_ROUNDS = [(0.40, [0.3, 0.5], [0.2] * 4, 2.0, 100, 300),
                 (0.62, [0.5, 0.7], [0.4] * 4, 4.0, 100, 300),
                 (0.55, [0.6, 0.8], [0.5, 0.5, 0.6, 0.6], 3.0, 200, 300)]
LOCAL_ROUNDS = [(None, [], [0.3] * 4, 1.0, 0, 0), (None, [], [0.35] * 4, 1.0, 0, 0)]


# ------------------------------------------------------------------ one run's figures

def test_a_result_reads_the_clouds_curve_tiers_targets_time_and_bytes(tmp_path):
    run = fake_run(tmp_path / "fedagg-seed3", "fedagg", 3, FEDAGG_ROUNDS)
    result = compare.read_result(run, "fedagg", [0.5, 0.6, 0.9])
    assert (result.name, result.method, result.seed, result.rounds) == ("fedagg", "fedagg", 3, 3)
    assert result.cloud_by_round == [0.40, 0.62, 0.55]
    assert (result.cloud_final, result.cloud_best) == (0.55, 0.62)
    assert result.tier_final == pytest.approx({"cloud": 0.55, "edge": 0.7, "device": 0.55})
    assert result.rounds_to_target == {"0.5": 2, "0.6": 2, "0.9": None}
    assert result.seconds_per_round == 3.0  # the median
    # 6 nodes with a parent: rounds of 6 x 400, 6 x 400, 6 x 500 bytes
    assert result.bytes_per_round == pytest.approx((2400 + 2400 + 3000) / 3)
    assert result.bytes_up_per_round == pytest.approx((600 + 600 + 1200) / 3)
    assert result.bytes_down_per_round == 1800
    assert result.run_dir == str(run)


def test_a_run_whose_root_has_no_rows_has_no_cloud_figures(tmp_path):
    run = fake_run(tmp_path / "local-seed0", "local", 0, LOCAL_ROUNDS)
    result = compare.read_result(run, "local", [0.5])
    assert result.method == "local" and result.rounds == 2
    assert result.cloud_final is None and result.cloud_best is None
    assert result.cloud_by_round == [None, None]
    assert result.tier_final == {"cloud": None, "edge": None, "device": pytest.approx(0.35)}
    assert result.rounds_to_target == {"0.5": None}
    assert result.bytes_per_round == 0


# ------------------------------------------------------------------ the report

@pytest.fixture
def results(tmp_path):
    """fedagg on seeds 0 and 1 (seed 1 a little better, and reaching 0.7), local on both."""
    better = [(cloud + 0.1, edges, devices, s, up, down) for cloud, edges, devices, s, up, down in FEDAGG_ROUNDS]
    runs = [("fedagg", 0, FEDAGG_ROUNDS), ("local", 0, LOCAL_ROUNDS), ("fedagg", 1, better),
            ("local", 1, LOCAL_ROUNDS)]
    return [compare.read_result(fake_run(tmp_path / f"{method}-seed{seed}", method, seed, rounds), method,
                                [0.5, 0.7, 0.95])
            for method, seed, rounds in runs]


def row_of(text, name):
    return next(line for line in text.splitlines() if line.startswith(name + " "))


def test_the_table_gives_each_method_its_spread_targets_time_and_bytes(results):
    text = compare_report.table(results, [0.5, 0.7, 0.95])
    header = text.splitlines()[0].split()
    assert header[:2] == ["method", "rounds"] and "to 50%" in text and "to 95%" in text
    fedagg = row_of(text, "fedagg")
    assert "60.0 (55.0..65.0)" in fedagg  # final: 0.55 and 0.65
    assert "67.0 (62.0..72.0)" in fedagg  # best: 0.62 and 0.72
    assert "70.0" in fedagg and "55.0" in fedagg  # the edges' and devices' final means
    assert "1.5 (2/2)" in fedagg  # 0.5: round 2 on seed 0, round 1 on seed 1
    assert "2.0 (1/2)" in fedagg  # 0.7: only seed 1, at round 2
    assert "never" in fedagg  # 0.95
    assert "3.00" in fedagg and "2.6 kB" in fedagg


def test_the_table_shows_a_method_without_cloud_rows_as_dashes_and_says_so(results):
    text = compare_report.table(results, [0.5])
    local = row_of(text, "local")
    cells = local.split()
    assert cells[:3] == ["local", "local", "2"]
    assert cells[3:6] == ["-", "-", "-"]  # cloud final, best, the edges' final
    assert "35.0" in local and "never" not in local and "0 B" in local
    assert "local: the cloud has no rows" in text and "fedagg: the cloud" not in text


@pytest.mark.parametrize("count, text", [(0, "0 B"), (999, "999 B"), (1234, "1.2 kB"),
                                         (1_234_567, "1.2 MB"), (5e9, "5.0 GB"), (2e12, "2.0 TB")])
def test_bytes_are_shown_in_human_units(count, text):
    assert human_bytes(count) == text


def test_the_report_writes_the_table_the_json_and_the_plot(results, tmp_path):
    out = tmp_path / "out"
    text = compare_report.write_report(results, [0.5, 0.7, 0.95], out)
    assert (out / compare_report.TABLE_FILE).read_text() == text + "\n"
    rows = json.loads((out / compare_report.JSON_FILE).read_text())
    assert rows == [json.loads(json.dumps(asdict(r))) for r in results]
    assert rows[1]["cloud_final"] is None and rows[1]["rounds_to_target"]["0.5"] is None
    assert rows[0]["rounds_to_target"] == {"0.5": 2, "0.7": None, "0.95": None}
    assert (out / compare_report.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_band_is_the_mean_and_range_over_seeds_skipping_missing_rounds():
    rounds, means, lows, highs = compare_report._band([[0.5, 0.6, None], [0.7, None, None], [0.6, 0.8]])
    assert rounds == [1, 2]
    assert means == pytest.approx([60, 70])
    assert lows == pytest.approx([50, 60]) and highs == pytest.approx([70, 80])
    assert compare_report._band([[None, None]]) == ([], [], [], [])


def test_the_plot_names_a_method_without_cloud_rows_as_not_drawn(results, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    legends = []
    monkeypatch.setattr(Figure, "savefig", lambda figure, path, **kwargs: legends.append(
        [text.get_text() for text in figure.axes[0].get_legend().get_texts()]))
    compare_report.plot(results, tmp_path / "plot.png")
    assert legends == [["fedagg", "local: no cloud rows, not drawn"]]


# ------------------------------------------------------------------ the command line's words

@pytest.mark.parametrize("parse, text, message", [
    (compare.parse_methods, "fedagg,fedprox", "unknown fedprox; choose from fedagg, hierfavg, local"),
    (compare.parse_methods, "local,local", "local given more than once"),
    (compare.parse_seeds, "0,x", "not a comma-separated list of integers"),
    (compare.parse_seeds, ",", "at least one seed"),
    (compare.parse_seeds, "1,2,1", "1 given more than once"),
    (compare.parse_targets, "0.5,high", "not a comma-separated list of numbers"),
    (compare.parse_targets, "0,0.5,60", "0, 60 not in (0, 1]"),
    (compare.parse_targets, "nan", "nan not in (0, 1]"),
    (compare.parse_targets, "0.5,0.5", "0.5 given more than once"),
])
def test_bad_lists_are_refused_with_the_reason(parse, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


def test_good_lists_are_parsed():
    assert compare.parse_methods(" fedagg, local ") == ["fedagg", "local"]
    assert compare.parse_methods("") == []
    assert compare.parse_seeds("0, 1,2") == [0, 1, 2]
    assert compare.parse_targets("0.5,1") == [0.5, 1.0] and compare.parse_targets("") == []


@pytest.mark.parametrize("variant, message", [
    ("big", "expected NAME=CONFIG"),
    ("=x.yaml", "expected NAME=CONFIG"),
    ("big=", "expected NAME=CONFIG"),
    ("a/b=" + str(TINY), "must be a plain word"),
    ("hierfavg=" + str(TINY), "is a method's name"),
    ("big=no/such.yaml", "no such file: no/such.yaml"),
])
def test_a_malformed_variant_is_refused(variant, message):
    with pytest.raises(ConfigError, match=message):
        compare.parse_variants([variant])


def test_a_variant_name_given_twice_is_refused():
    with pytest.raises(ConfigError, match="'big' is given twice"):
        compare.parse_variants([f"big={TINY}", f"big={CONFIGS / 'demo.yaml'}"])



@pytest.mark.parametrize("command", ["compare", "bench", "balance-test"])
def test_the_tools_refuse_an_object_store_out_before_anything_runs(command):
    """The tools write local folders; a URI would otherwise become a folder named 's3:'."""
    result = CliRunner().invoke(main, [command, str(TINY), "--out", "s3://bucket/runs"])
    assert result.exit_code == 2, result.output
    assert "s3://bucket/runs: bench, balance-test and compare write to a local folder" in result.output
    assert not pathlib.Path("s3:").exists()


# ------------------------------------------------------------------ planning

def all_cnn(config):
    tiers = [{**tier.model_dump(), "model": "cnn"} for tier in config.tree.tiers]
    return config.with_changes(tree={"tiers": tiers})


def test_every_run_is_planned_seed_by_seed_before_any_starts(tmp_path):
    config = load_config(TINY)
    variant = all_cnn(config).with_changes(method={"name": "hierfavg"}, training={"rounds": 7})
    runs = compare.plan_runs(config, ["fedagg", "local"], [0, 4], tmp_path, variants={"avg": variant}, rounds=2)
    assert [(r.name, r.seed, r.run_dir.name) for r in runs] == [
        ("fedagg", 0, "fedagg-seed0"), ("local", 0, "local-seed0"), ("avg", 0, "avg-seed0"),
        ("fedagg", 4, "fedagg-seed4"), ("local", 4, "local-seed4"), ("avg", 4, "avg-seed4")]
    assert [r.config.method.name for r in runs] == ["fedagg", "local", "hierfavg"] * 2
    assert {r.config.training.rounds for r in runs} == {2}
    assert [r.config.training.seed for r in runs] == [0, 0, 0, 4, 4, 4]
    # without --rounds a variant keeps its own
    kept = compare.plan_runs(config, [], [0], tmp_path / "kept", variants={"avg": variant})
    assert kept[0].config.training.rounds == 7
    assert list(tmp_path.iterdir()) == []  # planning writes nothing


def test_a_config_refused_for_a_later_run_is_an_error_naming_it_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="(?s)fedagg, seed -1: .*training.seed"):
        compare.plan_runs(load_config(TINY), ["fedagg", "local"], [0, -1], tmp_path)
    # hierfavg averages weights across tiers: the tiny tree's resnet10 cloud cannot take part
    with pytest.raises(ConfigError, match="(?s)hierfavg, seed 0: .*same model"):
        compare.plan_runs(load_config(TINY), ["fedagg", "hierfavg"], [0], tmp_path)
    compare.plan_runs(all_cnn(load_config(TINY)), ["fedagg", "hierfavg"], [0], tmp_path)


def test_a_used_run_directory_is_an_error_before_any_run(tmp_path):
    (tmp_path / "local-seed1").mkdir()
    (tmp_path / "local-seed1" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="local-seed1 is not empty: .* choose another --out"):
        compare.plan_runs(load_config(TINY), ["fedagg", "local"], [0, 1], tmp_path)
    (tmp_path / "elsewhere").write_text("a file where a folder must go")
    with pytest.raises(RunDirError, match="elsewhere is a file"):
        compare.plan_runs(load_config(TINY), ["local"], [0], tmp_path / "elsewhere")


def test_nothing_to_compare_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="nothing to compare"):
        compare.plan_runs(load_config(TINY), [], [0], tmp_path)


# ------------------------------------------------------------------ the command

@pytest.mark.parametrize("args, message", [
    (["--methods", "fedagg,fedsgd"], "unknown fedsgd; choose from fedagg, hierfavg, local"),
    (["--variant", "nothing"], "expected NAME=CONFIG"),
    (["--variant", "big=missing.yaml"], "no such file: missing.yaml"),
    (["--variant", f"fedagg={TINY}"], "is a method's name"),
    (["--variant", f"v={TINY}", "--variant", f"v={TINY}"], "given twice"),
    (["--targets", "50"], "50 not in (0, 1]"),
    (["--targets", "half"], "not a comma-separated list of numbers"),
    (["--seeds", "one"], "not a comma-separated list of integers"),
    (["--seeds", "0,-1"], "local, seed -1: config: invalid"),
    (["--methods", "local,hierfavg"], "hierfavg, seed 0"),
])
def test_bad_input_is_one_line_and_exit_2_and_starts_nothing(args, message, tmp_path):
    result = invoke("compare", TINY, "--local", "--methods", "local", "--out", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert "rayagg: error: " in result.output and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_local_takes_no_address(tmp_path):
    result = invoke("compare", TINY, "--local", "--address", "auto", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "takes no --address" in result.output


def test_compare_explains_itself():
    result = invoke("compare", "--help")
    assert result.exit_code == 0 and "--variant NAME=CONFIG" in result.output and "--targets" in result.output


# ------------------------------------------------------------------ end to end, in process

def expected_row(run_dir, targets):
    """What compare.json must hold for a run, worked out here from read_metrics alone."""
    records = read_metrics(run_dir / METRICS_FILE)
    last = max(r.round for r in records)
    cloud = {r.round: r.accuracy for r in records if r.tier == "cloud"}

    def final(tier):
        accuracies = [r.accuracy for r in records if r.round == last and r.tier == tier]
        return sum(accuracies) / len(accuracies) if accuracies else None

    def per_round(measure):
        return [measure([r for r in records if r.round == n]) for n in range(1, last + 1)]

    up = per_round(lambda rows: sum(r.bytes_up for r in rows))
    down = per_round(lambda rows: sum(r.bytes_down for r in rows))
    seconds = sorted(per_round(lambda rows: rows[0].round_s))
    return {"rounds": last, "cloud_final": cloud.get(last), "cloud_best": max(cloud.values(), default=None),
            "tier_final": {tier: final(tier) for tier in ("cloud", "edge", "device")},
            "rounds_to_target": {f"{t:g}": min((n for n, a in cloud.items() if a >= t), default=None)
                                 for t in targets},
            "cloud_by_round": [cloud.get(n) for n in range(1, last + 1)],
            "seconds_per_round": (seconds[(last - 1) // 2] + seconds[last // 2]) / 2,  # the median
            "bytes_per_round": (sum(up) + sum(down)) / last, "bytes_up_per_round": sum(up) / last,
            "bytes_down_per_round": sum(down) / last}


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the
    threads' spinning makes a round ten times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_compare_runs_two_methods_on_two_seeds_in_process(quick_config, tmp_path, one_torch_thread):
    # The autoencoder is pretrained per seed: a small public slice and one epoch keep that quick.
    config_path = tmp_path / "quick.yaml"
    quick = quick_config.with_changes(data={"public_samples": 500}, autoencoder={"epochs": 1})
    config_path.write_text(quick.to_yaml())
    out, json_path = tmp_path / "out", tmp_path / "results.json"
    result = invoke("compare", config_path, "--local", "--methods", "fedagg,local", "--seeds", "0,1",
                    "--rounds", "2", "--targets", "0.1,0.99", "--out", out, "--json", json_path)
    assert result.exit_code == 0, result.output
    rows = json.loads(json_path.read_text())
    assert rows == json.loads((out / compare_report.JSON_FILE).read_text())
    assert [(row["name"], row["method"], row["seed"]) for row in rows] == [
        ("fedagg", "fedagg", 0), ("local", "local", 0), ("fedagg", "fedagg", 1), ("local", "local", 1)]
    for row in rows:
        run_dir = out / f"{row['name']}-seed{row['seed']}"
        assert row["run_dir"] == str(run_dir) and (run_dir / METRICS_FILE).is_file()
        expected = expected_row(run_dir, [0.1, 0.99])
        assert {key: row[key] for key in expected} == expected  # JSON keeps floats exactly
        assert row["rounds"] == 2
    assert (out / compare_report.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / compare_report.TABLE_FILE).read_text().strip() in result.output
    assert row_of(result.output, "fedagg") and row_of(result.output, "local")
