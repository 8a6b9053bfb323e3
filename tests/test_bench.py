"""`rayagg bench` on the quick tree (CNNs, 160 samples, devices packed on one host): both
runs happen, every figure is there and consistent with the runs' own files."""
import json

import pytest
from click.testing import CliRunner
from conftest import packed

from rayagg.cli import main
from rayagg.metrics import read_metrics


def test_bench_runs_both_drivers_and_explains_the_round(ray_session, quick_config, tmp_path):
    config_path, out, figures = tmp_path / "quick.yaml", tmp_path / "bench", tmp_path / "bench.json"
    config_path.write_text(packed(quick_config, device=4).to_yaml())
    result = CliRunner().invoke(main, ["bench", str(config_path), "--rounds", "2", "--json", str(figures),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(figures.read_text())
    ray_records = read_metrics(out / "ray" / "metrics.parquet")
    local_records = read_metrics(out / "local" / "metrics.parquet")
    assert r["rounds"] == 2 and {x.round for x in local_records} == {1, 2}
    # Two rounds: the median is their mean.
    assert r["seconds_per_round"] == pytest.approx(sum({x.round: x.round_s for x in ray_records}.values()) / 2)
    assert r["inprocess_seconds_per_round"] == pytest.approx(
        sum({x.round: x.round_s for x in local_records}.values()) / 2)
    assert r["ratio"] == pytest.approx(r["seconds_per_round"] / r["inprocess_seconds_per_round"])
    # The critical path is made of calls the rounds waited for: never longer than the rounds.
    assert 0 < r["critical_path_s"] <= r["seconds_per_round"] * 1.001
    assert r["critical_path_ratio"] >= 0.999 and 0 <= r["overhead_share"] < 1
    assert "cloud-0" in r["critical_path_by_node"]  # every round ends with the cloud's evaluation
    assert r["gflops_machine"] > 0 and 0 < r["gflops_achieved"] < r["gflops_machine"]
    assert r["peak_rss_bytes"] > 100 * 2**20 and r["inprocess_peak_rss_bytes"] > 100 * 2**20
    trained_per_round = 2 * sum(x.bridge_samples for x in ray_records if x.round == 1 and x.tier != "cloud")
    assert r["samples_per_second"] == pytest.approx(2 * trained_per_round / (2 * r["seconds_per_round"]))
    assert 0 <= r["max_accuracy_difference"] <= 1
    assert f"ratio {r['ratio']:.2f}" in result.output and "critical path" in result.output
