"""A round as a graph of calls, and the critical path through it. Pure: no Ray, no torch.

A training method (rayagg/methods/) lists a round's steps; FedAgg's are
:func:`round_steps`: for every (child, parent) pair in post-order, the parent's logits
teach the child, then the child's logits teach the parent; then every scored node
evaluates (and, when a checkpoint is due, saves). A step that needs other steps'
answers (logits to learn from, weights to average) names them by index in ``inputs``.
Both runtimes run the list: the in-process driver one step after another, the Ray
runtime all at once, letting Ray run independent hosts together (and, with
``runtime.rounds_in_flight`` > 1, the next round's steps too). A node's steps run in
list order either way, so every node does the same work in the same order.

On Ray, :func:`batch_steps` groups the steps into :class:`Batch` es, one Ray call each:
the steps of one host that can start together (their inputs come from earlier batches),
so a host runs one ``learn`` call for its devices under ten edges, not ten calls. The
batches go out level by level, which also interleaves independent subtrees that share a
host instead of running one subtree's chain after the other's.

:func:`critical_path` takes the steps of several rounds with their measured times and
returns the longest chain of steps that must run one after the other: a step waits for
the answers it takes, and a host runs its calls in submission order. No schedule on
any number of cores can finish those rounds faster than that chain.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

from rayagg.core.tree import Tree
from rayagg.core.wire import Link

# FedAgg's calls (bridge samples and logits), every method's evaluation and checkpoint,
# and the weight-averaging methods' calls (rayagg/methods/hierfavg.py, local.py). Each is
# a method of the node (rayagg/learning/node.py) and of its host actor, of the same name.
LOGITS, LEARN, EVALUATE, SAVE = "logits", "learn", "evaluate", "save_checkpoint"
TRAIN, SHARE, AVERAGE, ADOPT = "train_local", "share_weights", "average_weights", "adopt_weights"


@dataclass(frozen=True)
class Step:
    """One call of a round: ``node`` runs ``call`` (on the bridge samples of ``leaves``,
    for FedAgg's calls), given the answers of the steps at indices ``inputs`` of the same
    round: a ``learn`` the logits it trains on, an ``average_weights`` the weights of
    the children it averages, an ``adopt_weights`` its parent's weights."""

    node: str
    call: str
    leaves: tuple[str, ...] = ()
    inputs: tuple[int, ...] = ()


@dataclass(frozen=True)
class Scores:
    """What a node's ``evaluate`` step answers: its test accuracy (0-1) and loss, and the
    seconds of training work (logits and learn) it did since its last evaluation."""

    accuracy: float
    loss: float
    busy_s: float


@dataclass(frozen=True)
class RoundResult:
    """What one round came to: each evaluated node's scores, node -> checkpoint SHA-256
    when the round saved one (else None), the round's wall-clock seconds, and node -> the
    bytes that crossed its link to its parent (rayagg/core/wire.py)."""

    round: int
    scores: dict[str, Scores]
    checkpoints: Optional[dict[str, str]]
    seconds: float
    wire: Mapping[str, Link] = field(default_factory=dict)


def round_steps(tree: Tree, leaves_of: Callable[[str], Sequence[str]], dead: Iterable[str] = (),
                scored: Sequence[str] = (), save: bool = False) -> list[Step]:
    """The round's steps in submission order. A pair runs when both nodes are live and
    the child's subtree has bridge samples (``leaves_of(child)``); then each node of
    ``scored`` evaluates and, with ``save``, writes its checkpoint."""
    dead = set(dead)
    steps: list[Step] = []
    for child, parent in tree.pairs():
        leaves = tuple(leaves_of(child))
        if child in dead or parent in dead or not leaves:
            continue
        steps.append(Step(parent, LOGITS, leaves))
        steps.append(Step(child, LEARN, leaves, inputs=(len(steps) - 1,)))
        steps.append(Step(child, LOGITS, leaves))
        steps.append(Step(parent, LEARN, leaves, inputs=(len(steps) - 1,)))
    return steps + closing_steps(scored, save)


def closing_steps(nodes: Sequence[str], save: bool, scored: Callable[[str], bool] = lambda node: True) -> list[Step]:
    """The end of every method's round, node by node: its evaluation (where ``scored``) and,
    with ``save``, its checkpoint; both after the node's training, so they see its result."""
    steps = []
    for node in nodes:
        if scored(node):
            steps.append(Step(node, EVALUATE))
        if save:
            steps.append(Step(node, SAVE))
    return steps


@dataclass(frozen=True)
class Batch:
    """Steps one host runs in one call, one after another: indices into the round's steps,
    in list order."""

    host: str
    steps: tuple[int, ...]


def batch_steps(steps: Sequence[Step], host_of: Callable[[str], str]) -> list[Batch]:
    """Groups ``steps`` into batches, in the order to submit them.

    A step's level is the lowest at which it may run: not below its node's previous step
    (the same level is fine: it runs right after it in the same call) and above every step
    whose answer it takes. The steps of a host at one level form a batch, in list order;
    batches go out by level. So each node's steps keep their list order, every input is
    answered by a batch submitted earlier (no call waits for a later one), and what one
    host runs at one level is one call however many nodes it carries. Steps of different
    nodes are independent, so the reordering changes no result.
    """
    levels: list[int] = []
    node_level: dict[str, int] = {}
    groups: dict[tuple[int, str], list[int]] = {}
    for index, step in enumerate(steps):
        level = max([node_level.get(step.node, 0), *(levels[i] + 1 for i in step.inputs)])
        levels.append(level)
        node_level[step.node] = level
        groups.setdefault((level, host_of(step.node)), []).append(index)
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[1][0]))
    return [Batch(host, tuple(indices)) for (_, host), indices in ordered]


@dataclass(frozen=True)
class CallTrace:
    """One traced call as a host recorded it (``rayagg bench``): which call, its seconds
    in the actor, of them torch work, the CPU seconds its process used, and when it
    started (``time.time()`` on the host's machine; 0.0 when not recorded)."""

    call: str
    seconds: float
    torch_s: float
    cpu_s: float
    started: float = 0.0


@dataclass(frozen=True)
class Timing:
    """A step as measured inside its actor: its seconds, of them the torch work (the rest
    is copying arguments and results in and out of the actor), and the CPU seconds its
    thread used (less than ``seconds`` when other processes shared the cores), and when it
    started (its host machine's ``time.time()``; 0.0 when not recorded; for traces only)."""

    seconds: float
    torch_s: float
    cpu_s: float = 0.0
    started: float = 0.0


@dataclass(frozen=True)
class CriticalPath:
    """The longest chain: its seconds, the torch work on it, and its steps as
    (round position, step index) pairs, first to last."""

    seconds: float
    torch_s: float
    steps: list[tuple[int, int]]


def critical_path(rounds: Sequence[Sequence[Step]], timings: Sequence[Sequence[Timing]],
                  host_of: Callable[[str], str],
                  batches: Optional[Sequence[Sequence[Batch]]] = None) -> CriticalPath:
    """The longest chain through ``rounds`` (each a list of steps) given each step's
    measured ``timings`` (same shape). ``batches``: each round's batches as submitted
    (:func:`batch_steps`); without them every step is its own call, in list order. A
    batch starts after every input of its steps and after the host's previous call; its
    steps then run one after the other. Empty rounds: a zero path."""
    finish: dict[tuple[int, int], float] = {}
    before: dict[tuple[int, int], Optional[tuple[int, int]]] = {}
    last_on_host: dict[str, tuple[int, int]] = {}
    for position, (steps, measured) in enumerate(zip(rounds, timings)):
        if len(steps) != len(measured):
            raise ValueError(f"round {position}: {len(steps)} steps but {len(measured)} timings")
        calls = batches[position] if batches is not None else [
            Batch(host_of(step.node), (index,)) for index, step in enumerate(steps)]
        for batch in calls:
            inputs = [(position, i) for index in batch.steps for i in steps[index].inputs]
            for index in batch.steps:
                waits = [w for w in (last_on_host.get(batch.host), *inputs) if w is not None]
                first = max(waits, key=finish.__getitem__, default=None)
                key = (position, index)
                finish[key] = (finish[first] if first else 0.0) + measured[index].seconds
                before[key], last_on_host[batch.host] = first, key
                inputs = []  # the batch's later steps wait only for the step before them
    if not finish:
        return CriticalPath(0.0, 0.0, [])
    end = max(finish, key=finish.__getitem__)
    path = []
    while end is not None:
        path.append(end)
        end = before[end]
    path.reverse()
    torch_s = sum(timings[position][index].torch_s for position, index in path)
    return CriticalPath(finish[path[-1]], torch_s, path)


def match_timings(rounds: Sequence[Sequence[Step]],
                  traces: Mapping[str, Sequence[CallTrace]]) -> list[list[Timing]]:
    """Pairs each step with its measurement. ``traces`` are what the hosts recorded per
    node in the order the calls ran. A node runs its calls in submission order, so the
    k-th record of a node is its k-th step. ValueError when a trace does not fit the
    steps (a call missing, extra or of another kind)."""
    cursor = {node: 0 for node in traces}
    matched = []
    for steps in rounds:
        timed = []
        for step in steps:
            records, at = traces.get(step.node, ()), cursor.get(step.node, 0)
            if at >= len(records) or records[at].call != step.call:
                found = records[at].call if at < len(records) else "nothing"
                raise ValueError(f"{step.node}: step {at + 1} should be {step.call}, the trace has {found}")
            cursor[step.node] = at + 1
            record = records[at]
            timed.append(Timing(record.seconds, record.torch_s, record.cpu_s, record.started))
        matched.append(timed)
    extra = {node: len(records) - cursor.get(node, 0) for node, records in traces.items()
             if len(records) > cursor.get(node, 0)}
    if extra:
        raise ValueError(f"the traces hold calls no step accounts for: {extra}")
    return matched
