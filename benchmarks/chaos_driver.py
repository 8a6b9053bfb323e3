"""The driver a chaos run kills: `rayagg run` (or `rayagg run --resume`) on a cluster,
with an observer that checks the run's invariants after every round.

Usage (benchmarks/chaos.py starts it; by hand for a look):
    .venv/bin/python benchmarks/chaos_driver.py RUN_DIR --address HOST:PORT --log FILE
        (--config CONFIG --rounds N | --resume)

A new run trains CONFIG into RUN_DIR; ``--resume`` continues RUN_DIR from its last
checkpoint with its own config.yaml, as ``rayagg run --resume RUN_DIR`` does: the files a
resume reads are verified first (rayagg/rundir/resume.py), then the actors are rebuilt and
restored. Each line of FILE is one JSON record: the run started (with where each host
runs, so the chaos script can pick a machine), every event, every collected round with
the invariants it broke (rayagg/core/invariants.py) and every committed cut with what its
verification found. Exit codes as `rayagg run`'s: 0 done, 2 a rayagg error, 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import traceback
from typing import Any, Optional, Sequence

# No rayagg.runtime.auth.join_by_address here, unlike `rayagg run --address`: the emulated
# cluster (tests/emulated_cluster.py, ray.cluster_utils) runs without token auth, and a
# driver in token mode joins it but its actors are cancelled as they are created.
from rayagg.config import load_config
from rayagg.core.events import Event
from rayagg.core.invariants import (expected_root_leaves, metrics_problems, root_sample_problems,
                                    tree_problems)
from rayagg.core.schedule import RoundResult, Step
from rayagg.errors import RayaggError
from rayagg.rundir.manifest import CONFIG_FILE, RunState
from rayagg.rundir.metrics import NodeMetrics
from rayagg.rundir.resume import earlier_events, earlier_records, verify_cut
from rayagg.observe import Progress, RunObserver, RunStart

EVALUATE = "evaluate"


def run_dir_problems(run_dir: pathlib.Path) -> list[str]:
    """What `rayagg status` and a resume would refuse in RUN_DIR: the manifest, every file
    of its cut by SHA-256, the metrics up to its round, the events it counts."""
    try:
        state = RunState.load(run_dir)
        verify_cut(state, run_dir)
        earlier_records(run_dir, state.round)
        earlier_events(run_dir, state)
    except RayaggError as exc:
        return [f"run directory: {exc}"]
    return []


class InvariantWatch(RunObserver):
    """Checks the invariants after every collected round and every committed cut, and
    writes every record to ``log`` (one JSON object a line, flushed at once: the process
    may be killed at any moment)."""

    def __init__(self, runner: Any, log: pathlib.Path):
        self.runner, self._log = runner, open(log, "a", buffering=1)
        self.evaluated: dict[int, set[str]] = {}  # round -> the nodes its last attempt evaluates
        self._asked: Optional[tuple] = None  # (round, expected leaves, leaves routed, the root's count call)

    def write(self, kind: str, **fields: Any) -> None:
        self._log.write(json.dumps({"kind": kind, "t": time.time(), **fields}) + "\n")

    def run_started(self, run: RunStart) -> None:
        self.write("started", resumed_after=run.resumed_after, placement=self._placement())

    def round_submitted(self, round_index: int, steps: Sequence[Step], attempt: int) -> None:
        self.evaluated[round_index] = {step.node for step in steps if step.call == EVALUATE}

    def event(self, event: Event) -> None:
        self.write("event", event=str(getattr(event.kind, "value", event.kind)), round=event.round, node=event.node, detail=event.detail)

    def round_collected(self, result: RoundResult, records: Sequence[NodeMetrics]) -> None:
        runner = self.runner
        problems = tree_problems(runner.tree, runner.dead)
        problems += metrics_problems(result.round, [r.node for r in records], self.evaluated.pop(result.round, ()),
                                     runner.live_nodes)
        problems += self._root_problems()  # the previous round's ask, answered by now
        self._ask_root(result.round)
        root = next((r.accuracy for r in records if r.node == runner.tree.root), None)
        self.write("round", round=result.round, seconds=result.seconds, root_accuracy=root, problems=problems,
                   placement=self._placement())

    def checkpoint_committed(self, state: RunState) -> None:
        self.write("cut", round=state.round, problems=run_dir_problems(self.runner.run_dir))

    def run_finished(self, outcome) -> None:
        problems = self._root_problems()
        if problems:
            self.write("round", round=None, seconds=None, root_accuracy=None, problems=problems, placement={})

    def _ask_root(self, round_index: int) -> None:
        """Asks the root's host for its bridge-sample count without waiting: the call runs
        after the round's later work already queued there, and waiting for it here would
        hold back the round's cut (a driver killed meanwhile loses the round)."""
        runner = self.runner
        root, keep = runner.tree.root, runner.plan.config.supervision.keep_dead_leaf_samples
        expected = expected_root_leaves(runner.tree, runner.dead, runner.left, keep)
        held = set(runner.bridge.held.get(root, set()))
        self._asked = (round_index, expected, held, runner.hosts.call(root, "bridge_sample_count"))

    def _root_problems(self) -> list[str]:
        """The answer of the last ask; a root that died meanwhile cannot answer (its death is
        recovered like any other, and its restart re-sends every sample)."""
        from rayagg.runtime.waiting import await_all

        if self._asked is None:
            return []
        (round_index, expected, held, call), self._asked = self._asked, None
        try:
            (count,) = await_all([call], self.runner.plan.config.runtime.startup_timeout_s)
        except RayaggError as exc:
            self.write("unchecked", round=round_index, why=str(exc))
            return []
        return root_sample_problems(round_index, expected, self.runner.plan.shard_sizes, held, count)

    def _placement(self) -> dict[str, str]:
        """host -> the Ray node it runs on."""
        return {host: report.ray_node_id for host, report in self.runner.placement.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--address", required=True)
    parser.add_argument("--log", type=pathlib.Path, required=True)
    parser.add_argument("--config")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    try:
        train(args)
    except RayaggError as exc:
        print(f"chaos driver: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: B902 - the chaos script reads the exit code
        traceback.print_exc()
        return 1
    return 0


def train(args: argparse.Namespace) -> None:
    """What `rayagg run` does, with the watch among the observers."""
    from rayagg.learning.plan import load_data, make_plan
    from rayagg.loop import execute
    from rayagg.rundir.resume import load_for_resume
    from rayagg.runtime.runner import RayRunner

    config = load_config(args.run_dir / CONFIG_FILE if args.resume else args.config)
    if args.rounds is not None:
        config = config.with_rounds(args.rounds)
    dataset = load_data(config)
    plan = make_plan(config, dataset)
    state = load_for_resume(args.run_dir, plan) if args.resume else None
    runner = RayRunner(plan, address=args.address, dataset=dataset)
    del dataset
    watch = InvariantWatch(runner, args.log)
    execute(runner, args.run_dir, observers=[Progress(), watch], resume=state)


if __name__ == "__main__":
    sys.exit(main())
