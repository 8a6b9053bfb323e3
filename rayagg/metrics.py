"""Per-round, per-node metrics: a Parquet table, a one-line summary and a plot."""
from __future__ import annotations

import pathlib
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import pyarrow as pa

from rayagg.files import read_sealed_rows, write_sealed_rows

# Before rayagg 0.10 (load balancing) a row stopped at round_s; such files are still read.
_FIRST_SCHEMA = pa.schema([("round", pa.int32()), ("node", pa.string()), ("tier", pa.string()),
                           ("accuracy", pa.float64()), ("loss", pa.float64()), ("seconds", pa.float64()),
                           ("round_s", pa.float64())])
SCHEMA = pa.schema([*_FIRST_SCHEMA, ("parent", pa.string()), ("children", pa.int32()),
                    ("bridge_samples", pa.int64()), ("idle_s", pa.float64())])


@dataclass(frozen=True)
class NodeMetrics:
    """One node after one round: test accuracy and loss, its busy seconds (training and
    logits), the round's wall-clock seconds; its load: its parent then, its children,
    the bridge samples it trained on and its idle seconds (the round's seconds it was not
    busy: waiting on its children, its parent, or a node sharing its host)."""

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


def write_metrics(records: list[NodeMetrics], path: pathlib.Path) -> None:
    write_sealed_rows([asdict(r) for r in records], SCHEMA, path)


def read_metrics(path: pathlib.Path) -> list[NodeMetrics]:
    """Reads metrics.parquet (also one written before the load columns: they read as 0);
    CheckpointError naming the file if it is corrupt or foreign."""
    rows = read_sealed_rows(path, "metrics file", SCHEMA, older=(_FIRST_SCHEMA,))
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
    """E.g. ``round 3/5  cloud 81.2%  edge 78.0%  device 70.1%  (41.3 s, edge imbalance 1.31)``;
    non-root tiers are means; the imbalance is :func:`imbalance` of the edges.
    ``counted`` names a tier (an elastic one) whose live nodes are counted too:
    ``device 70.1% of 30``."""
    means = tier_means(records, tier_names)
    parts = [f"{tier} {100 * acc:5.1f}%" for tier, acc in means.items()]
    if counted in means:
        parts[list(means).index(counted)] += f" of {sum(r.tier == counted for r in records)}"
    edges = balanced_tier(tier_names)
    ratio = imbalance(records, edges) if edges else None
    load = f", {edges} imbalance {ratio:.2f}" if ratio is not None else ""
    return f"round {round_index}/{rounds}  " + "  ".join(parts) + f"  ({records[0].round_s:.1f} s{load})"


def plot_accuracy(records: list[NodeMetrics], tier_names: list[str], path: pathlib.Path,
                  events: Sequence = ()) -> None:
    """Draws mean test accuracy per tier per round to a PNG; deaths, restarts and
    resumes are marked with a dashed line at their round, devices joining and leaving
    with a dotted line between the rounds they came between (``+21 -3``). Below, when
    the tree has edges, a small panel shows their imbalance per round (:func:`imbalance`)."""
    import matplotlib  # imported here: a plot is optional work at the very end of a run

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rounds = sorted({r.round for r in records})
    edges = balanced_tier(tier_names)
    ratios = {n: imbalance([r for r in records if r.round == n], edges) for n in rounds} if edges else {}
    ratios = {n: ratio for n, ratio in ratios.items() if ratio is not None}
    if ratios:
        fig, (ax, load_ax) = plt.subplots(2, 1, figsize=(6, 5.2), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 1]})
        load_ax.plot(list(ratios), list(ratios.values()), marker=".", color="tab:red")
        load_ax.axhline(1.0, color="grey", linestyle=":", alpha=0.6)
        moved: dict[float, int] = {}
        for event in events:  # a move is made before the round after the one logged
            if event.kind == "rebalance":
                moved[event.round + 0.5] = moved.get(event.round + 0.5, 0) + 1
        for boundary, count in sorted(moved.items()):
            load_ax.axvline(boundary, color="tab:green", linestyle=":", alpha=0.8)
            load_ax.annotate(f"{count} moved", (boundary, max(ratios.values())), fontsize=7, ha="center",
                             va="top", color="tab:green")
        load_ax.set_ylabel(f"{edges}\nimbalance", fontsize=8)
        load_ax.set_xlabel("round")
        load_ax.grid(alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.set_xlabel("round")
    for tier in tier_names:
        curve = [tier_means([r for r in records if r.round == n], [tier]).get(tier) for n in rounds]
        ax.plot(rounds, [100 * a for a in curve], marker="o", label=tier)
    marked = {}
    for event in events:
        if event.kind in ("declare_dead", "restart", "resume"):
            marked.setdefault(max(event.round, 1), []).append(event.node or event.kind)
    for round_index, nodes in sorted(marked.items()):
        ax.axvline(round_index, color="grey", linestyle="--", alpha=0.6)
        ax.annotate(", ".join(sorted(set(nodes))), (round_index, ax.get_ylim()[1]), fontsize=7,
                    rotation=90, va="top", ha="right", color="grey")
    for boundary, label in membership_marks(events).items():
        ax.axvline(boundary, color="tab:purple", linestyle=":", alpha=0.8)
        ax.annotate(label, (boundary, ax.get_ylim()[1]), fontsize=8, va="top", ha="center",
                    color="tab:purple", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("FedAgg: mean test accuracy per tier")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def membership_marks(events: Sequence) -> dict[float, str]:
    """Where the plot marks elastic devices joining and leaving: the boundary between the
    round an event was logged in and the next (x = round + 0.5) -> e.g. ``+21 -3``."""
    changes: dict[float, list[int]] = {}
    for event in events:
        if event.kind in ("join", "leave") and event.node:
            counts = changes.setdefault(event.round + 0.5, [0, 0])
            counts[event.kind == "leave"] += 1
    return {x: " ".join(f"{sign}{n}" for sign, n in zip("+-", counts) if n)
            for x, counts in sorted(changes.items())}
