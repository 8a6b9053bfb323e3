"""Before a retry: wait until every live node is either heard from or declared dead. Pure code.

A machine that dies takes every host on it at once, but the run learns of each host's
death separately: a host with a call pending fails that call as soon as Ray notices the
machine is gone, while a host whose calls had all finished is only found by its missing
heartbeats, up to ``interval_s x max_missed`` later. A retry submitted in between goes to
that host too and fails again, and a round may be retried only once. So the runner waits
first until each node the retry will call has a verdict: a heartbeat that arrived after
the failure was seen (alive), or a death declared by the supervisor. The wait has a
deadline (every silent host is declared dead by then), and it costs a live run about one
heartbeat interval per retry.

Nothing here imports Ray: the runner passes in how to ask the supervisor, and tests pass a
fake supervisor and a fake clock.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping


def unconfirmed(ages: Mapping[str, float], since_s: float) -> frozenset[str]:
    """The nodes of ``ages`` (node -> seconds since its last heartbeat, for the live nodes:
    ``supervision.heartbeat_ages``) not heard from in the last ``since_s`` seconds."""
    return frozenset(node for node, age in ages.items() if age >= since_s)


def await_verdicts(*, since: float, deadline_s: float, poll_s: float, tick: Callable[[], None],
                   ages: Callable[[], Mapping[str, float]], clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> frozenset[str]:
    """Waits until every live node has been heard from since ``since`` (a ``clock`` time:
    when the failure was seen) or is dead, or until ``since + deadline_s``. Every ``poll_s``
    it calls ``tick`` (the supervisor decides and the caller absorbs its deaths) and then
    ``ages`` (the live nodes' heartbeat ages, dead ones left out). Returns the nodes still
    unconfirmed at the deadline: empty unless a live node stayed silent past it."""
    while True:
        tick()
        asked = clock()  # before asking: an age measured later is never taken for fresher
        silent = unconfirmed(ages(), asked - since)
        if not silent or asked >= since + deadline_s:
            return silent
        sleep(max(0.0, min(poll_s, since + deadline_s - asked)))
