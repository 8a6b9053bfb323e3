"""What every tracker records, computed once: a round's values by name, the config as
flat parameters, and the code a run ran. Pure (no tracker library)."""
from __future__ import annotations

import pathlib
import subprocess
from typing import Any, Sequence

from rayagg.rundir.metrics import NodeMetrics, balanced_tier, imbalance, tier_means


def round_scalars(records: Sequence[NodeMetrics], tier_names: Sequence[str]) -> dict[str, float]:
    """One collected round's values from its metrics.parquet rows (one round's), by name:

    - ``tier/<tier>/accuracy``, ``/loss`` (means), ``/nodes`` (live), ``/busy_max_seconds``
      for every tier with a row;
    - ``node/<node>/accuracy``, ``/loss``, ``/busy_seconds``, ``/children``,
      ``/bridge_samples`` for each node above the leaves (a run may have thousands of
      leaves: their tier's values stand for them);
    - ``round/seconds``, ``round/bytes_up``, ``round/bytes_down`` (what crossed the tree's
      links) and ``round/imbalance`` (the edges' busiest / mean busy seconds; absent
      without edges or with fewer than two).

    Raises ValueError for no rows or rows of several rounds."""
    rounds = {r.round for r in records}
    if len(rounds) != 1:
        raise ValueError(f"records of exactly one round are needed, got rounds {sorted(rounds)}")
    values: dict[str, float] = {}
    for tier, accuracy in tier_means(list(records), list(tier_names)).items():
        mine = [r for r in records if r.tier == tier]
        values.update({f"tier/{tier}/accuracy": accuracy,
                       f"tier/{tier}/loss": sum(r.loss for r in mine) / len(mine),
                       f"tier/{tier}/nodes": len(mine),
                       f"tier/{tier}/busy_max_seconds": max(r.seconds for r in mine)})
    leaves = tier_names[-1]
    for r in records:
        if r.tier != leaves:
            values.update({f"node/{r.node}/accuracy": r.accuracy, f"node/{r.node}/loss": r.loss,
                           f"node/{r.node}/busy_seconds": r.seconds, f"node/{r.node}/children": r.children,
                           f"node/{r.node}/bridge_samples": r.bridge_samples})
    values.update({"round/seconds": records[0].round_s,
                   "round/bytes_up": sum(r.bytes_up for r in records),
                   "round/bytes_down": sum(r.bytes_down for r in records)})
    edges = balanced_tier(list(tier_names))
    ratio = imbalance(records, edges) if edges else None
    if ratio is not None:
        values["round/imbalance"] = ratio
    return {name: float(value) for name, value in values.items()}


def flat_params(raw: Any, prefix: str = "") -> dict[str, str]:
    """A config's ``model_dump()`` as dotted keys to strings (list items by index:
    ``tree.tiers.0.model``); an empty mapping or list is kept as one value."""
    if isinstance(raw, dict) and raw:
        items = raw.items()
    elif isinstance(raw, list) and raw:
        items = enumerate(raw)
    else:
        return {prefix: "null" if raw is None else str(raw)} if prefix else {}
    flat: dict[str, str] = {}
    for key, value in items:
        flat.update(flat_params(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def rayagg_commit() -> str:
    """The git commit of the rayagg code that runs (``<sha>-dirty`` with local changes),
    or "unknown" outside a git checkout (an installed wheel)."""
    here = pathlib.Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
