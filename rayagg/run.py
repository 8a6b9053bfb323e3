"""The round loop shared by both runtimes: train, evaluate, record, checkpoint."""
from __future__ import annotations

import pathlib
import time
from typing import Callable, Protocol

from rayagg.config import RunConfig
from rayagg.metrics import NodeMetrics, plot_accuracy, summary_line, write_parquet
from rayagg.tree import Tree


class Runner(Protocol):
    """What a runtime offers the loop; see ``driver.LocalRunner`` and ``runtime.RayRunner``."""

    tree: Tree

    def start(self) -> None: ...
    def train_round(self) -> None: ...
    def evaluate(self) -> dict[str, tuple[float, float, float]]: ...
    def bridge_sample_counts(self) -> dict[str, int]: ...
    def save_checkpoints(self, directory: pathlib.Path) -> None: ...
    def close(self) -> None: ...


def execute(config: RunConfig, runner: Runner, out_dir: pathlib.Path,
            echo: Callable[[str], None] = print) -> list[NodeMetrics]:
    """Runs ``config.training.rounds`` rounds and writes RUN_DIR's files.

    RUN_DIR gets config.yaml (the resolved config) first, metrics.parquet after every
    round (so a crash keeps what was measured), then checkpoints/ and accuracy.png.
    Returns every round's metrics. The runner is closed whatever happens.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(config.to_yaml())
    tier_names = list(runner.tree.tier_names)
    records: list[NodeMetrics] = []
    rounds = config.training.rounds
    try:
        runner.start()
        for round_index in range(1, rounds + 1):
            started = time.perf_counter()
            runner.train_round()
            round_s = time.perf_counter() - started
            this_round = [NodeMetrics(round_index, node, runner.tree.tier_name(node), acc, loss,
                                      work_s, round_s)
                          for node, (acc, loss, work_s) in runner.evaluate().items()]
            records += this_round
            write_parquet(records, out_dir / "metrics.parquet")
            echo(summary_line(round_index, rounds, this_round, tier_names))
        runner.save_checkpoints(out_dir / "checkpoints")
        plot_accuracy(records, tier_names, out_dir / "accuracy.png")
    finally:
        runner.close()
    return records
