"""Draws a `rayagg bench --trace` file as a timeline picture (no browser needed).

Usage: .venv/bin/python benchmarks/draw_trace.py TRACE.json OUT.png

One row per track of the trace (the "critical path" track on top, then each host's nodes,
labelled "node (host)" where the host's name differs), every complete event ("ph": "X")
a bar coloured by its call; the calls on the critical path get a thick black outline on
their node's row and appear again on the top row; dotted lines mark where each round's
first call started. Reads only the trace file (rayagg/tools/trace.py writes it).
"""
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

COLOURS = {"logits": "#4c72b0", "learn": "#dd8452", "evaluate": "#55a868", "save_checkpoint": "#8172b3",
           "train_local": "#c44e52", "share_weights": "#937860", "average_weights": "#da8bc3",
           "adopt_weights": "#8c8c8c"}


def draw(trace: dict, out: pathlib.Path) -> None:
    events = trace["traceEvents"]
    meta = [e for e in events if e["ph"] == "M"]
    processes = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    process_rank = {e["pid"]: e["args"]["sort_index"] for e in meta if e["name"] == "process_sort_index"}
    thread_rank = {(e["pid"], e["tid"]): e["args"]["sort_index"] for e in meta if e["name"] == "thread_sort_index"}
    tracks = sorted(threads, key=lambda t: (process_rank.get(t[0], t[0]), thread_rank.get(t, t[1])))
    row = {track: number for number, track in enumerate(tracks)}
    labels = []
    for pid, tid in tracks:
        node, process = threads[pid, tid], processes.get(pid, "")
        host = process.removeprefix("host ")
        labels.append(node if host == node else f"{node} ({host})")

    slices = [e for e in events if e["ph"] == "X"]
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(tracks) + 1.6))
    for event in slices:
        y = row[event["pid"], event["tid"]]
        start, width = event["ts"] / 1e6, event["dur"] / 1e6
        critical = event["args"].get("critical", False)
        ax.barh(y, width, left=start, height=0.7, color=COLOURS.get(event["name"], "#cccccc"),
                edgecolor="black" if critical else "white", linewidth=1.6 if critical else 0.3)
    firsts = {}
    for event in slices:
        number = event["args"].get("round")
        firsts[number] = min(firsts.get(number, float("inf")), event["ts"] / 1e6)
    for number, start in sorted(firsts.items()):
        ax.axvline(start, color="grey", linestyle=":", linewidth=1)
        ax.text(start, -0.75, f" round {number} starts", fontsize=8, color="dimgrey", va="center")
    ax.set_yticks(range(len(tracks)), labels)
    ax.set_ylim(len(tracks) - 0.4, -1.1)
    ax.set_xlabel("seconds since the first traced call")
    other = trace.get("otherData", {})
    ax.set_title(f"rayagg bench --trace: {other.get('config', '')}, rounds {', '.join(map(str, other.get('rounds', [])))}; "
                 f"critical path {other.get('critical_path_s', 0):.1f} s (outlined, and on the top row)",
                 fontsize=10)
    order = list(COLOURS)
    used = sorted({e["name"] for e in slices}, key=lambda name: order.index(name) if name in order else len(order))
    handles = [Patch(color=COLOURS.get(name, "#cccccc"), label=name) for name in used]
    handles.append(Patch(facecolor="white", edgecolor="black", linewidth=1.6, label="on the critical path"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(handles), fontsize=8,
              frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    trace_file, out = map(pathlib.Path, sys.argv[1:])
    draw(json.loads(trace_file.read_text()), out)
    print(f"{out}: {trace_file}")


if __name__ == "__main__":
    main()
