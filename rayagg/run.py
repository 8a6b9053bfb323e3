"""The round loop shared by both runtimes: train, evaluate, record, checkpoint, resume."""
from __future__ import annotations

import json
import pathlib
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Optional, Protocol

import pyarrow.parquet as pq

from rayagg.errors import CheckpointError
from rayagg.events import Event, write_events
from rayagg.metrics import NodeMetrics, plot_accuracy, summary_line, write_parquet
from rayagg.tree import Tree

if TYPE_CHECKING:  # plan imports torch; the loop itself does not need it
    from rayagg.plan import Plan


@dataclass(frozen=True)
class RunState:
    """What a resumed run needs besides the node checkpoints: the last finished round,
    the tree as it was then (after any re-parenting) and the dead nodes."""

    round: int
    parent_of: dict
    dead: list

    def save(self, run_dir: pathlib.Path) -> None:
        tmp = run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(run_dir / "state.json")

    @classmethod
    def load(cls, run_dir: pathlib.Path) -> "RunState":
        path = run_dir / "state.json"
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise CheckpointError(f"{run_dir} has no state.json: no checkpoint was written "
                                  f"(nothing to resume)") from None
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path} is corrupt: {exc}") from exc

    def tree(self, like: Tree) -> Tree:
        return Tree(like.tier_names, like.tier_of, dict(self.parent_of))


class Runner(Protocol):
    """What a runtime offers the loop; see ``driver.LocalRunner`` and ``runtime.RayRunner``."""

    plan: Plan
    tree: Tree
    dead: frozenset
    events: list[Event]
    round_index: int

    def start(self, run_dir: pathlib.Path, resume: Optional[RunState] = None) -> None: ...
    def train_round(self) -> None: ...
    def evaluate(self) -> dict[str, tuple[float, float, float]]: ...
    def bridge_sample_counts(self) -> dict[str, int]: ...
    def save_checkpoints(self, directory: pathlib.Path) -> None: ...
    def close(self) -> None: ...


def execute(runner: Runner, out_dir: pathlib.Path, echo: Callable[[str], None] = print,
            resume: bool = False) -> list[NodeMetrics]:
    """Runs rounds up to the plan's ``training.rounds`` and writes RUN_DIR's files.

    RUN_DIR gets config.yaml (the resolved config) first; metrics.parquet and
    events.parquet after every round (so a crash keeps what was measured);
    checkpoints/ and state.json every ``supervision.checkpoint_every`` rounds, at the
    end, and on Ctrl-C; accuracy.png at the end. ``resume`` continues the run in
    ``out_dir`` after its last checkpoint. Returns every round's metrics. The runner is
    closed whatever happens.
    """
    config = runner.plan.config  # one source of truth: what the nodes were built from
    out_dir.mkdir(parents=True, exist_ok=True)
    state = RunState.load(out_dir) if resume else None
    records = _earlier_records(out_dir, state.round) if state else []
    (out_dir / "config.yaml").write_text(config.to_yaml())
    tier_names = list(runner.tree.tier_names)
    rounds, shown = config.training.rounds, 0
    finished = state.round if state else 0
    try:
        runner.start(out_dir, state)
        if state:
            runner.events.append(Event.now(state.round, "resume", "", f"resumed after round {state.round}"))
        for round_index in range(runner.round_index + 1, rounds + 1):
            started = time.perf_counter()
            runner.train_round()
            round_s = time.perf_counter() - started
            this_round = [NodeMetrics(round_index, node, runner.tree.tier_name(node), acc, loss,
                                      work_s, round_s)
                          for node, (acc, loss, work_s) in runner.evaluate().items()]
            records += this_round
            write_parquet(records, out_dir / "metrics.parquet")
            shown = _report_events(runner, out_dir, echo, shown)
            echo(summary_line(round_index, rounds, this_round, tier_names))
            finished = round_index
            if round_index % config.supervision.checkpoint_every == 0 or round_index == rounds:
                _checkpoint(runner, out_dir, round_index)
        plot_accuracy(records, tier_names, out_dir / "accuracy.png", runner.events)
    except KeyboardInterrupt:
        # The models are saved as they are; a resumed run redoes the interrupted round.
        echo("rayagg: interrupted; writing a final checkpoint (resume with --resume)")
        _checkpoint(runner, out_dir, finished)
        raise
    finally:
        _report_events(runner, out_dir, echo, shown)
        runner.close()
    return records


def _checkpoint(runner: Runner, out_dir: pathlib.Path, round_index: int) -> None:
    """Node checkpoints first, state.json last: a state file always has its checkpoints."""
    if round_index < 1:
        return
    runner.save_checkpoints(out_dir / "checkpoints")
    RunState(round_index, dict(runner.tree.parent_of), sorted(runner.dead)).save(out_dir)


def _report_events(runner: Runner, out_dir: pathlib.Path, echo, shown: int) -> int:
    for event in runner.events[shown:]:
        echo(f"rayagg: [{event.kind}] {event.detail}")
    if runner.events:
        write_events(runner.events, out_dir / "events.parquet")
    return len(runner.events)


def _earlier_records(out_dir: pathlib.Path, last_round: int) -> list[NodeMetrics]:
    path = out_dir / "metrics.parquet"
    if not path.is_file():
        return []
    rows = pq.read_table(path).to_pylist()
    return [NodeMetrics(**row) for row in rows if row["round"] <= last_round]
