"""``rayagg compare``'s report: the table, compare.json and compare.png, from the runs'
results (rayagg/tools/compare.py reads them from each run's files). docs/compare.md
describes the table, the JSON keys and the plot."""
from __future__ import annotations

import json
import pathlib
from dataclasses import asdict
from typing import Optional, Sequence

from rayagg.rundir.metrics import human_bytes
from rayagg.tools.compare import RunResult, mean, target_key

TABLE_FILE, JSON_FILE, PLOT_FILE = "compare.txt", "compare.json", "compare.png"


def table(results: Sequence[RunResult], targets: Sequence[float] = ()) -> str:
    """One row per method or variant: the cloud's final and best accuracy (mean and
    min..max over the seeds), each other tier's final mean, the rounds to each target
    (the mean over the seeds that reached it, and how many did), seconds and bytes per
    round; then a line for each that has no cloud rows."""
    names = list(dict.fromkeys(r.name for r in results))
    tiers = list(dict.fromkeys(t for r in results for t in list(r.tier_final)[1:]))
    header = ["", "method", "rounds", "cloud final %", "cloud best %", *(f"{t} %" for t in tiers),
              *(f"to {100 * t:g}%" for t in targets), "s/round", "bytes/round"]
    rows = [header]
    for name in names:
        mine = [r for r in results if r.name == name]
        rows.append([name, "/".join(dict.fromkeys(r.method for r in mine)),
                     _spread([r.rounds for r in mine], "d"),
                     _spread([_percent(r.cloud_final) for r in mine], ".1f"),
                     _spread([_percent(r.cloud_best) for r in mine], ".1f"),
                     *(_mean_text([_percent(r.tier_final.get(t)) for r in mine]) for t in tiers),
                     *(_target_text(mine, t) for t in targets),
                     _seconds_text(mean([r.seconds_per_round for r in mine])),
                     human_bytes(mean([r.bytes_per_round for r in mine]))])
    seeds = sorted({r.seed for r in results})
    notes = [f"(seeds {', '.join(map(str, seeds))}{'; mean (min..max) over the seeds' if len(seeds) > 1 else ''}"
             "; cloud: the root tier)"]
    notes += [f"{name}: the cloud has no rows (its nodes are not evaluated); left out of the plot"
              for name in names if not _has_cloud([r for r in results if r.name == name])]
    return "\n".join([_aligned(rows), *notes])


def _aligned(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows)


def _target_text(mine: Sequence[RunResult], target: float) -> str:
    if not _has_cloud(mine):
        return "-"
    reached = [n for r in mine if (n := r.rounds_to_target.get(target_key(target))) is not None]
    return f"{mean(reached):.1f} ({len(reached)}/{len(mine)})" if reached else "never"


def _has_cloud(results: Sequence[RunResult]) -> bool:
    return any(a is not None for r in results for a in r.cloud_by_round)


def _seconds_text(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 10 else f"{seconds:.1f}"


def _percent(accuracy: Optional[float]) -> Optional[float]:
    return None if accuracy is None else 100 * accuracy


def _mean_text(values: Sequence[Optional[float]]) -> str:
    known = [v for v in values if v is not None]
    return f"{mean(known):.1f}" if known else "-"


def _spread(values: Sequence[Optional[float]], spec: str) -> str:
    """The mean and min..max of the known values; one value alone; "-" for none."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    if len(set(known)) == 1:
        return format(known[0], spec)
    middle = format(mean(known), spec if spec != "d" else ".1f")
    return f"{middle} ({format(min(known), spec)}..{format(max(known), spec)})"


def write_json(results: Sequence[RunResult], path: pathlib.Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


def plot(results: Sequence[RunResult], path: pathlib.Path) -> None:
    """Draws each method's and variant's cloud accuracy by round to a PNG: the mean over
    the seeds as a line, their min..max as a band. One without cloud rows is named in the
    legend as not drawn."""
    import matplotlib  # imported here: only the report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in dict.fromkeys(r.name for r in results):
        curves = [r.cloud_by_round for r in results if r.name == name]
        rounds, means, lows, highs = _band(curves)
        if not rounds:
            ax.plot([], [], " ", label=f"{name}: no cloud rows, not drawn")
            continue
        line, = ax.plot(rounds, means, marker="o", label=name)
        ax.fill_between(rounds, lows, highs, color=line.get_color(), alpha=0.2)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("cloud test accuracy (%)")
    ax.set_title("cloud accuracy by round: mean and min..max over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _band(curves: Sequence[Sequence[Optional[float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """(rounds, mean, min, max) in percent over the curves, at each round some curve has a value."""
    found = []
    for index in range(max((len(c) for c in curves), default=0)):
        values = [100 * c[index] for c in curves if index < len(c) and c[index] is not None]
        if values:
            found.append((index + 1, mean(values), min(values), max(values)))
    return tuple(map(list, zip(*found))) if found else ([], [], [], [])


def write_report(results: Sequence[RunResult], targets: Sequence[float], out: pathlib.Path) -> str:
    """Writes OUT/compare.txt (the table), OUT/compare.json and OUT/compare.png; returns the table."""
    text = table(results, targets)
    out.mkdir(parents=True, exist_ok=True)
    (out / TABLE_FILE).write_text(text + "\n")
    write_json(results, out / JSON_FILE)
    plot(results, out / PLOT_FILE)
    return text
