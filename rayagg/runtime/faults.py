"""Fault injection: the runtime's one documented hook for tests and chaos runs.

``RayRunner(plan, faults=hook)`` hands ``hook`` to the host pool, which calls it with a
:class:`FaultPoint` at the moments a fault must land exactly, and nowhere else:

* ``CALL_SUBMITTED``: a call (``point.method``) to ``point.node`` was just submitted to the
  node's host, and has not necessarily run yet. Killing the host now makes that call fail
  as a death (e.g. kill the edge receiving a moved device's bridge samples).
* ``HOSTS_CREATED``: the hosts ``point.hosts`` were just created again mid-run (for a
  restart, re-join or joining device) and may not run yet. Killing one now loses a
  machine during a restart: its nodes are reported dead like any other (they may be
  restarted again while their restarts last).
* ``HOSTS_STARTED``: the hosts ``point.hosts`` were just created (at start, or again for
  a restart, re-join or joining device), answer and send heartbeats; their nodes have
  not encoded or been restored yet.

The hook runs in the driver's thread and may kill actors (``ray.kill(runner.hosts.
handles[host], no_restart=True)``), stop a node (``handle.stop_node.remote(node)``) or
record what it saw; it must return quickly and must not change the tree. Everything a
test only watches goes through observers instead (rayagg/observe.py). Without a hook
the pool calls a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable


class FaultAt(str, Enum):
    CALL_SUBMITTED = "call_submitted"
    HOSTS_CREATED = "hosts_created"
    HOSTS_STARTED = "hosts_started"


@dataclass(frozen=True)
class FaultPoint:
    """Where the runtime is: ``at``, and the node and method of a submitted call or the
    hosts just started."""

    at: FaultAt
    node: str = ""
    method: str = ""
    hosts: tuple[str, ...] = ()


FaultHook = Callable[[FaultPoint], None]


def no_faults(point: FaultPoint) -> None:
    """The hook of a run without fault injection."""
