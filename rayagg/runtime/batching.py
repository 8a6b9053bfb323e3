"""One Ray call for several nodes' steps: how a batch travels and how a host runs it.

The round's batches come from rayagg/core/schedule.py (:func:`~rayagg.core.schedule.
batch_steps`); this module carries one to its host and back. The driver builds each
step's arguments as for a call of its own; :func:`lift` moves every object ref among
them to the call's top level, where Ray resolves it before the call runs, and leaves an
:class:`Input` in its place. The host runs the steps in order with :func:`run` and
answers one value per step, each in its own object (``num_returns``), so a step that
takes another's answer fetches that answer alone.

Failures are data: a step that raises answers :class:`Failed` and the other nodes of the
batch carry on; the node's later steps in the batch, and any step that takes a failed
answer, answer the same :class:`Failed`, and the driver reads it as it read the
exception before (rayagg/runtime/waiting.py). A step that only took a failed answer
never ran, so its node's later steps run: as with one call per step, where Ray fails
just the call whose argument failed. A host that dies fails its whole call,
and a call that takes an answer of a dead host fails whole too (Ray resolves its inputs
first): both are deaths, after which the round is retried anyway.

No Ray here: the host actor and the host pool pass in what is Ray's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Input:
    """Stands in a step's arguments for the call's ``index``-th top-level input."""

    index: int


@dataclass(frozen=True)
class Failed:
    """A step's answer when ``node``'s ``call`` raised ``error`` (this step's or an
    earlier one's whose answer it needed)."""

    node: str
    call: str
    error: BaseException


# One step of a batch as it travels: (node, call, arguments after the node).
Item = tuple[str, str, tuple]


def lift(requests: Sequence[Item], is_ref: Callable[[Any], bool]) -> tuple[list[Item], list[Any]]:
    """(the requests with every argument that ``is_ref`` replaced by an :class:`Input`,
    those refs in order): the refs become the call's top-level arguments."""
    refs: list[Any] = []
    items = []
    for node, call, args in requests:
        lifted = []
        for arg in args:
            if is_ref(arg):
                lifted.append(Input(len(refs)))
                refs.append(arg)
            else:
                lifted.append(arg)
        items.append((node, call, tuple(lifted)))
    return items, refs


def run(items: Sequence[Item], inputs: Sequence[Any], step: Callable[..., Any]) -> list[Any]:
    """Runs ``step(node, call, *args)`` for each item in order, the inputs put back in the
    arguments; returns one answer per item (:class:`Failed` where it failed)."""
    answers: list[Any] = []
    raised: dict[str, Failed] = {}  # node -> its failure: the node's later steps are skipped
    for node, call, args in items:
        resolved = [inputs[arg.index] if isinstance(arg, Input) else arg for arg in args]
        failure = raised.get(node) or next((a for a in resolved if isinstance(a, Failed)), None)
        if failure is None:
            try:
                answers.append(step(node, call, *resolved))
                continue
            except Exception as exc:  # data, not an exception: the batch's other nodes go on
                failure = raised[node] = Failed(node, call, exc)
        answers.append(failure)
    return answers
