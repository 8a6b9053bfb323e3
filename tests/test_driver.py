"""The sequential in-process driver on the tiny tree: the reference the Ray runtime is
compared against. The run the tests check is conftest's ``local_run``, shared with the
agreement test in tests/test_ray_runtime.py."""
import numpy as np
import pyarrow.parquet as pq


def test_plan_keeps_public_and_test_data_away_from_leaves(tiny_plan, tiny_config):
    shards = list(tiny_plan.shards.values())
    union = np.concatenate(shards)
    assert len(union) == len(set(union)) == tiny_config.data.train_samples
    assert all(len(shard) >= tiny_config.data.min_samples_per_device for shard in shards)


def test_every_node_holds_its_subtrees_bridge_samples(local_run, tiny_plan):
    _, inspected, _ = local_run
    tree = tiny_plan.tree
    for node, count in inspected["counts"].items():
        assert count == sum(len(tiny_plan.shards[leaf]) for leaf in tree.leaves(node))
    assert inspected["counts"][tree.root] == sum(len(s) for s in tiny_plan.shards.values())


def test_no_two_nodes_share_a_model(local_run, tiny_plan):
    _, inspected, _ = local_run
    assert len(set(inspected["models"])) == len(tiny_plan.tree.nodes)


def test_metrics_checkpoints_and_plot_are_written(local_run, tiny_plan, tiny_config):
    records, _, out = local_run
    table = pq.read_table(out / "metrics.parquet").to_pylist()
    assert len(table) == len(records) == tiny_config.training.rounds * len(tiny_plan.tree.nodes)
    assert {row["tier"] for row in table} == {"cloud", "edge", "device"}
    assert (out / "accuracy.png").stat().st_size > 1000
    assert (out / "config.yaml").read_text().startswith("name: tiny")
    assert sorted(p.stem for p in (out / "checkpoints").glob("round-*/*.pt")) == sorted(tiny_plan.tree.nodes)


def test_the_cloud_learns(local_run):
    records, _, _ = local_run
    cloud = [r.accuracy for r in records if r.node == "cloud-0"]
    assert cloud[-1] > 0.3  # chance is 0.1
