"""RUN_DIR/metrics.parquet: per-round, per-node metrics, and what is read off them (tier
means, the edges' imbalance, the one-line round summary). The plot is rayagg/rundir/plot.py."""
from __future__ import annotations

import pathlib
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import pyarrow as pa

from rayagg.files import read_sealed_rows, write_sealed_rows

METRICS_FILE = "metrics.parquet"

# Before rayagg 0.10 (load balancing) a row stopped at round_s; such files are still read.
_FIRST_SCHEMA = pa.schema([("round", pa.int32()), ("node", pa.string()), ("tier", pa.string()),
                           ("accuracy", pa.float64()), ("loss", pa.float64()), ("seconds", pa.float64()),
                           ("round_s", pa.float64())])
# Before rayagg 0.12 (methods) a row stopped at idle_s; such files are still read.
_LOAD_SCHEMA = pa.schema([*_FIRST_SCHEMA, ("parent", pa.string()), ("children", pa.int32()),
                         ("bridge_samples", pa.int64()), ("idle_s", pa.float64())])
SCHEMA = pa.schema([*_LOAD_SCHEMA, ("bytes_up", pa.int64()), ("bytes_down", pa.int64())])


@dataclass(frozen=True)
class NodeMetrics:
    """One node after one round: test accuracy and loss, its busy seconds (training and
    logits), the round's wall-clock seconds; its load: its parent then, its children,
    the bridge samples it trained on and its idle seconds (the round's seconds it was not
    busy: waiting on its children, its parent, or a node sharing its host); and what
    crossed its link to its parent in the round: ``bytes_up`` it sent its parent,
    ``bytes_down`` its parent sent it (logits and bridge samples under fedagg, weights
    under hierfavg; rayagg/methods/)."""

    round: int
    node: str
    tier: str
    accuracy: float
    loss: float
    seconds: float
    round_s: float
    parent: str = ""
    children: int = 0
    bridge_samples: int = 0
    idle_s: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0


def write_metrics(records: list[NodeMetrics], path: pathlib.Path) -> None:
    write_sealed_rows([asdict(r) for r in records], SCHEMA, path)


def read_metrics(path: pathlib.Path) -> list[NodeMetrics]:
    """Reads metrics.parquet (also one written before the load or byte columns: they read as 0);
    CheckpointError naming the file if it is corrupt or foreign."""
    rows = read_sealed_rows(path, "metrics file", SCHEMA, older=(_FIRST_SCHEMA, _LOAD_SCHEMA))
    return [NodeMetrics(**row) for row in rows]


def imbalance(records: Sequence[NodeMetrics], tier: str) -> Optional[float]:
    """Max / mean of the busy seconds of ``tier``'s nodes in ``records`` (one round's):
    1.0 is even; None with fewer than two such nodes or none busy."""
    busy = [r.seconds for r in records if r.tier == tier]
    if len(busy) < 2 or not sum(busy) > 0:
        return None
    return max(busy) / (sum(busy) / len(busy))


def tier_order(records: Sequence[NodeMetrics]) -> list[str]:
    """The tiers of one round's rows, root first, read from who is whose parent (rows come
    in no particular order); empty when the root has no row."""
    tier_of = {r.node: r.tier for r in records}
    below = {tier_of[r.parent]: r.tier for r in records if r.parent in tier_of}
    order = [r.tier for r in records if not r.parent][:1]
    while order and order[-1] in below and below[order[-1]] not in order:
        order.append(below[order[-1]])
    return order


def balanced_tier(tier_names: Sequence[str]) -> Optional[str]:
    """The tier whose load is balanced: the one above the leaves (the edges), unless that
    is the root."""
    return tier_names[-2] if len(tier_names) > 2 else None


def tier_means(records: list[NodeMetrics], tier_names: list[str]) -> dict[str, float]:
    """Mean accuracy per tier, in tier order."""
    by_tier: dict[str, list[float]] = defaultdict(list)
    for record in records:
        by_tier[record.tier].append(record.accuracy)
    return {tier: sum(by_tier[tier]) / len(by_tier[tier]) for tier in tier_names if by_tier[tier]}


def summary_line(round_index: int, rounds: int, records: list[NodeMetrics],
                 tier_names: list[str], counted: str = "") -> str:
    """E.g. ``round 3/5  cloud 81.2%  edge 78.0%  device 70.1%  (41.3 s, up 1.2 MB, down 1.2 MB,
    edge imbalance 1.31)``; non-root tiers are means; up and down are the bytes the rows'
    nodes sent their parents and received from them (none shown when nothing moved);
    the imbalance is :func:`imbalance` of the edges.
    ``counted`` names a tier (an elastic one) whose live nodes are counted too:
    ``device 70.1% of 30``."""
    means = tier_means(records, tier_names)
    parts = [f"{tier} {100 * acc:5.1f}%" for tier, acc in means.items()]
    if counted in means:
        parts[list(means).index(counted)] += f" of {sum(r.tier == counted for r in records)}"
    edges = balanced_tier(tier_names)
    ratio = imbalance(records, edges) if edges else None
    load = f", {edges} imbalance {ratio:.2f}" if ratio is not None else ""
    up, down = sum(r.bytes_up for r in records), sum(r.bytes_down for r in records)
    moved = f", up {human_bytes(up)}, down {human_bytes(down)}" if up or down else ""
    return f"round {round_index}/{rounds}  " + "  ".join(parts) + f"  ({records[0].round_s:.1f} s{moved}{load})"


def human_bytes(count: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (powers of 1000, as network traffic is counted)."""
    if abs(count) < 1000:
        return f"{count:.0f} B"
    for unit in ("kB", "MB", "GB"):
        count /= 1000
        if abs(count) < 1000:
            return f"{count:.1f} {unit}"
    return f"{count / 1000:.1f} TB"
