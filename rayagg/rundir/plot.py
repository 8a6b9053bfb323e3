"""RUN_DIR/accuracy.png: mean test accuracy per tier per round, with the run's events
marked, and the edges' imbalance below."""
from __future__ import annotations

import math
import pathlib
from typing import Sequence

from rayagg.core.events import EventKind
from rayagg.rundir.metrics import NodeMetrics, balanced_tier, imbalance, tier_means
from rayagg.storage import StorePath, as_path

ACCURACY_PLOT = "accuracy.png"


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
        _draw_imbalance(load_ax, edges, ratios, events)
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.set_xlabel("round")
    for tier in tier_names:
        curve = [tier_means([r for r in records if r.round == n], [tier]).get(tier) for n in rounds]
        if all(a is None for a in curve):
            continue  # a tier no method step evaluates (the nodes above the devices under `local`)
        ax.plot(rounds, [math.nan if a is None else 100 * a for a in curve], marker="o", label=tier)
    _mark_events(ax, events)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("mean test accuracy per tier")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig, path) -> None:
    """Writes the figure as PNG: to a local file as matplotlib does, to an object store as
    one whole-object write."""
    path = as_path(path)
    if isinstance(path, StorePath):
        import io

        from rayagg.files import write_atomic

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        write_atomic(path, buffer.getvalue())
    else:
        fig.savefig(path, dpi=100)


def _draw_imbalance(load_ax, edges: str, ratios: dict[int, float], events: Sequence) -> None:
    """The lower panel: the edges' imbalance per round, rebalancing moves marked."""
    load_ax.plot(list(ratios), list(ratios.values()), marker=".", color="tab:red")
    load_ax.axhline(1.0, color="grey", linestyle=":", alpha=0.6)
    moved: dict[float, int] = {}
    for event in events:  # a move is made before the round after the one logged
        if event.kind == EventKind.REBALANCE:
            moved[event.round + 0.5] = moved.get(event.round + 0.5, 0) + 1
    for boundary, count in sorted(moved.items()):
        load_ax.axvline(boundary, color="tab:green", linestyle=":", alpha=0.8)
        load_ax.annotate(f"{count} moved", (boundary, max(ratios.values())), fontsize=7, ha="center",
                         va="top", color="tab:green")
    load_ax.set_ylabel(f"{edges}\nimbalance", fontsize=8)
    load_ax.set_xlabel("round")
    load_ax.grid(alpha=0.3)


def _mark_events(ax, events: Sequence) -> None:
    """Deaths, restarts and resumes as dashed lines at their round; joins and leaves as
    dotted lines between rounds."""
    marked = {}
    for event in events:
        if event.kind in (EventKind.DECLARE_DEAD, EventKind.RESTART, EventKind.RESUME):
            marked.setdefault(max(event.round, 1), []).append(event.node or event.kind)
    for round_index, nodes in sorted(marked.items()):
        ax.axvline(round_index, color="grey", linestyle="--", alpha=0.6)
        ax.annotate(", ".join(sorted(set(nodes))), (round_index, ax.get_ylim()[1]), fontsize=7,
                    rotation=90, va="top", ha="right", color="grey")
    for boundary, label in membership_marks(events).items():
        ax.axvline(boundary, color="tab:purple", linestyle=":", alpha=0.8)
        ax.annotate(label, (boundary, ax.get_ylim()[1]), fontsize=8, va="top", ha="center",
                    color="tab:purple", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})


def membership_marks(events: Sequence) -> dict[float, str]:
    """Where the plot marks elastic devices joining and leaving: the boundary between the
    round an event was logged in and the next (x = round + 0.5) -> e.g. ``+21 -3``."""
    changes: dict[float, list[int]] = {}
    for event in events:
        if event.kind in (EventKind.JOIN, EventKind.LEAVE) and event.node:
            counts = changes.setdefault(event.round + 0.5, [0, 0])
            counts[event.kind == EventKind.LEAVE] += 1
    return {x: " ".join(f"{sign}{n}" for sign, n in zip("+-", counts) if n)
            for x, counts in sorted(changes.items())}
