"""Resuming a run: what a CONFIG given with --resume may change, and verifying everything
a resume reads before anything starts or changes."""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from rayagg.core.events import Event
from rayagg.errors import CheckpointError, ConfigError
from rayagg.rundir.directory import check_not_live
from rayagg.rundir.events import EVENTS_FILE, read_events
from rayagg.files import file_sha256
from rayagg.rundir.manifest import STATE_FILE, RunState
from rayagg.rundir.metrics import METRICS_FILE, NodeMetrics, read_metrics
from rayagg.storage import as_path

if TYPE_CHECKING:  # plan imports torch; checking a config does not need it
    from rayagg.config import RunConfig
    from rayagg.learning.plan import Plan


def check_resumable_config(stored: "RunConfig", given: "RunConfig") -> None:
    """Raises ConfigError unless ``given`` may continue a run made with ``stored``: only
    training.rounds, the runtime, supervision, output and tracking sections, the autoencoder cache folder,
    data.source and each tier's resources and nodes_per_actor may change (where nodes run and
    how their data reaches them, e.g. on another cluster: both sources give the same shards;
    everything else decides what the checkpoints mean)."""
    def fixed(config: "RunConfig") -> dict:
        raw = config.model_dump()
        raw["training"].pop("rounds")
        raw["autoencoder"].pop("cache_dir")
        raw["data"].pop("source")
        for tier in raw["tree"]["tiers"]:
            tier.pop("resources")
            tier.pop("nodes_per_actor")
        for section in ("runtime", "supervision", "output", "tracking"):
            raw.pop(section)
        return raw

    old, new = fixed(stored), fixed(given)
    changed = sorted(key for key in old if old[key] != new.get(key))
    if changed:
        raise ConfigError(f"CONFIG differs from the run's config.yaml in {', '.join(changed)}: a "
                          "resumed run may change only training.rounds, runtime, supervision, output, tracking, data.source "
                          "and the tiers' resources and nodes_per_actor")


def load_for_resume(run_dir: pathlib.Path, plan: "Plan") -> RunState:
    """Verifies everything a resume of ``run_dir`` with ``plan`` will read, before anything
    starts or changes: the manifest, every file it lists (by SHA-256), the bridge-sample
    store, metrics and events, and that the tree and the round count fit. Returns the
    manifest; raises CheckpointError (or ConfigError) naming the file or the setting."""
    from rayagg.rundir import store  # imports torch, which reading a manifest does not need

    run_dir = as_path(run_dir)
    check_not_live(run_dir)
    state = RunState.load(run_dir)
    _check_tree_fits(state, plan, run_dir / STATE_FILE)
    rounds = plan.config.training.rounds
    if state.round >= rounds:
        raise ConfigError(f"{run_dir} already finished round {state.round} of {rounds}: "
                          "nothing to resume (give --rounds N with N > "
                          f"{state.round} to train further)")
    verify_cut(state, run_dir)
    stores = state.bridge_stores(run_dir)
    if stores:  # their digests were verified just above
        store.read_bridge_stores(list(stores), expected_counts=expected_bridge_counts(state, plan))
    earlier_records(run_dir, state.round)
    earlier_events(run_dir, state)
    return state


@dataclass(frozen=True)
class CutCheck:
    """What :func:`verify_cut` checked: ``files`` listed, ``size`` their bytes, whether the
    manifest records every size (``sized``) and whether their SHA-256 was checked
    (``hashed``) or only their presence and recorded sizes."""

    files: int
    size: int
    sized: bool
    hashed: bool


def verify_cut(state: RunState, run_dir: pathlib.Path, hash_up_to: float = math.inf) -> CutCheck:
    """Checks every file ``state`` lists: that it exists, has the size the manifest records
    (a manifest written before sizes were recorded has none) and, when the files together
    are at most ``hash_up_to`` bytes, its SHA-256. CheckpointError naming the first file
    that is missing, of another size or of another digest."""
    run_dir = as_path(run_dir)
    total = 0
    for relative in state.digests:
        path = run_dir / relative
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing: {STATE_FILE} lists it in the checkpoint of "
                                  f"round {state.round}") from None
        except OSError as exc:
            raise CheckpointError(f"{path} cannot be read: {exc}") from exc
        recorded = state.sizes.get(relative)
        if recorded is not None and size != recorded:
            raise CheckpointError(f"{path} is corrupt: it has {size} bytes where {STATE_FILE} records "
                                  f"{recorded} (truncated, altered or replaced)")
        total += size
    hashed = total <= hash_up_to
    if hashed:
        for relative, digest in state.digests.items():
            if file_sha256(run_dir / relative) != digest:
                raise CheckpointError(f"{run_dir / relative} is corrupt: its SHA-256 differs from the "
                                      f"one recorded in {STATE_FILE} (truncated, altered or replaced)")
    return CutCheck(len(state.digests), total, set(state.digests) <= set(state.sizes), hashed)


def _check_tree_fits(state: RunState, plan: "Plan", path: pathlib.Path) -> None:
    """The checkpoint's tree must be CONFIG's: the same nodes, except that an elastic
    tier's devices may be any that CONFIG's range allows."""
    nodes, expected = set(state.parent_of), set(plan.tree.nodes)
    if plan.config.tree.elastic is not None:
        leaves = set(plan.tree.nodes_of_tier(len(plan.tree.tier_names) - 1))
        fits = nodes - set(plan.shards) == expected - leaves and nodes & set(plan.shards)
    else:
        fits = nodes == expected
    if not fits:
        raise CheckpointError(f"{path}: the checkpoint's tree ({len(nodes)} nodes) is not CONFIG's "
                              f"tree ({len(expected)} nodes)")


def expected_bridge_counts(state: RunState, plan: "Plan") -> dict[str, int]:
    """leaf -> bridge samples, for every leaf of the checkpoint's tree (devices that joined
    later encoded then; those that never joined have none)."""
    return {leaf: len(plan.shards[leaf]) for leaf in state.parent_of if leaf in plan.shards}


def earlier_records(run_dir: pathlib.Path, last_round: int) -> list[NodeMetrics]:
    """The metrics of rounds up to ``last_round`` (those a resume keeps); CheckpointError if
    metrics.parquet is corrupt or lacks one of those rounds."""
    path = as_path(run_dir) / "metrics.parquet"
    if last_round == 0:
        return []
    records = [r for r in read_metrics(path) if r.round <= last_round]
    missing = sorted(set(range(1, last_round + 1)) - {r.round for r in records})
    if missing:
        raise CheckpointError(f"metrics file {path} lacks round(s) {missing} of the checkpoint")
    return records


def earlier_events(run_dir: pathlib.Path, state: Optional[RunState] = None) -> list[Event]:
    """The run's events (those a resume keeps); CheckpointError if events.parquet is corrupt,
    or missing or shorter while the manifest (``state``, else RUN_DIR/state.json if any)
    records events in it. A run in which nothing happened has no events file; a manifest
    written before the count was recorded (``events`` None) cannot tell, and a missing
    file then reads as no events."""
    run_dir = as_path(run_dir)
    path = run_dir / EVENTS_FILE
    if state is None and (run_dir / STATE_FILE).is_file():
        state = RunState.load(run_dir)
    recorded = state.events if state is not None else None
    if not path.exists():
        if recorded:
            raise CheckpointError(f"events file {path} is missing: {STATE_FILE} records {recorded} "
                                  f"event(s) in it up to the checkpoint of round {state.round}")
        return []
    events = read_events(path)
    if recorded is not None and len(events) < recorded:
        raise CheckpointError(f"events file {path} holds {len(events)} event(s), fewer than the {recorded} "
                              f"{STATE_FILE} records: it was truncated or replaced by an older copy")
    return events
