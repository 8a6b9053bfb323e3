"""Waiting on actor calls by a deadline, with Ray's exceptions turned into the project's.

A pending call is a :class:`Call`: the node, the call's name and its object ref, so every
error and timeout names the node and what it was doing. :func:`settle` is the runner's one wait
loop during rounds: it tells deaths apart from other failures and polls the
supervisor between waits. :func:`await_all` is the plain wait of start-up and restarts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional

import ray
from ray import exceptions as ray_errors

from rayagg.errors import NodeDiedError, NodeError, NodeStoppedError, NodeTimeoutError, RayaggError
from rayagg.runtime.batching import Failed

class Call(NamedTuple):
    """A call submitted to a node's host: the node, the method's name, its ObjectRef."""

    node: str
    method: str
    ref: Any


@dataclass(frozen=True)
class Death:
    """A call failed because a node is gone: ``node`` is whose call failed (or whose
    result it needed); ``actor_id`` is the host actor that died, None when only that
    node stopped (its host lives on)."""

    node: str
    actor_id: Optional[str]


@dataclass
class Settled:
    """What a batch of calls came to: values by node (a node's last call), values by
    (node, call name), the calls that failed because a node died, and the nodes known to
    have died."""

    values: dict[str, Any] = field(default_factory=dict)
    by_call: dict[tuple[str, str], Any] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    died: set[str] = field(default_factory=set)


def settle(pending: list[Call], timeout_s: float, *, poll_s: float, on_poll: Callable[[], None],
           on_death: Callable[[Death], set[str]], context: str = "",
           on_value: Callable[[str, str, Any], None] = lambda node, call, value: None) -> Settled:
    """Waits for every call, calling ``on_poll`` every ``poll_s`` (the supervisor's tick)
    and ``on_value(node, call, value)`` as each call succeeds.

    A call that fails because a node died goes to ``on_death``, which returns the nodes
    that died with it, and is counted in the result; a call that fails for another
    reason raises NodeError (its message starts with ``context``, e.g. "round 3"); the
    deadline raises NodeTimeoutError naming every node still waited on.
    """
    deadline = time.monotonic() + timeout_s
    origin = {ref: (node, call) for node, call, ref in pending}
    remaining, settled = list(origin), Settled()
    while remaining:
        left = deadline - time.monotonic()
        if left <= 0:
            _time_out(remaining, origin, timeout_s)
        ready, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=min(poll_s, left))
        for ref in ready:
            node, call = origin[ref]
            death = _value_or_death(ref, node, call, settled, context)
            if death is not None:
                settled.failed.append((node, call))
                settled.died |= on_death(death)
            else:
                on_value(node, call, settled.by_call[node, call])
        on_poll()
    return settled


def _value_or_death(ref: Any, node: str, call: str, settled: Settled, context: str) -> Optional[Death]:
    prefix = f"{context}: " if context else ""
    try:
        value = ray.get(ref, timeout=0)
    except ray_errors.RayActorError as exc:
        return Death(node, exc.actor_id)
    except ray_errors.RayTaskError as exc:
        # A call that only needed a dead node's result fails with that node's error.
        cause = exc.cause
        if isinstance(cause, ray_errors.RayActorError):
            return Death(node, cause.actor_id)
        if isinstance(cause, NodeStoppedError):
            return Death(cause.node, None)
        raise NodeError(node, f"{prefix}{call} failed: {describe(cause, node)}") from exc
    if isinstance(value, Failed):  # a step of a batch (rayagg/runtime/batching.py)
        if isinstance(value.error, NodeStoppedError):
            return Death(value.error.node, None)
        raise NodeError(value.node, f"{prefix}{value.call} failed: {describe(value.error, value.node)}") \
            from value.error
    settled.values[node] = settled.by_call[node, call] = value
    return None


def await_all(pending: list[Call], timeout_s: float) -> list[Any]:
    """Waits for every call by one deadline, without recovery (start-up, restarts);
    returns the values in order or raises the project's error for the first failure."""
    deadline = time.monotonic() + timeout_s
    remaining = [ref for _, _, ref in pending]
    while remaining and time.monotonic() < deadline:
        # Slices of a second: Python runs signal handlers (Ctrl-C, SIGTERM) only between
        # them, and a host waiting for an autoscaler may take minutes.
        _, remaining = ray.wait(remaining, num_returns=len(remaining),
                                timeout=min(1.0, max(0.0, deadline - time.monotonic())))
    if remaining:
        _time_out(remaining, {ref: (node, call) for node, call, ref in pending}, timeout_s)
    return [get(ref, node, call) for node, call, ref in pending]


def _time_out(remaining: list[Any], origin: dict[Any, tuple[str, str]], timeout_s: float) -> None:
    waiting = sorted({origin[ref][0] for ref in remaining})
    node, call = origin[remaining[0]]
    raise NodeTimeoutError(node, f"{call} did not finish within {timeout_s:g} s "
                                 f"(still waiting on {', '.join(waiting)})")


def get(ref: Any, node: str, call: str) -> Any:
    """``ray.get`` of a finished ref, with Ray's exceptions (and a batch step's
    :class:`Failed`) turned into the project's."""
    try:
        value = ray.get(ref, timeout=0)
    except ray_errors.RayActorError as exc:
        raise NodeDiedError(node, f"died during {call}: {type(exc).__name__}") from exc
    except ray_errors.RayTaskError as exc:
        raise NodeError(node, f"{call} failed: {describe(exc.cause, node)}") from exc
    if isinstance(value, Failed):
        raise NodeError(value.node, f"{value.call} failed: {describe(value.error, value.node)}") from value.error
    return value


def describe(cause: BaseException, node: str) -> str:
    """An exception from inside ``node``'s actor, for a message that already names the node:
    ours as written (less a leading node name), others with their type."""
    if isinstance(cause, RayaggError):
        return str(cause).removeprefix(f"{node}: ")
    return f"{type(cause).__name__}: {cause}"


def kill(actor: Any) -> None:
    """Stops an actor for good; one already dead (or never started) is left as it is."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead or never started: nothing left to stop
        pass
