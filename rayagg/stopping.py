"""Stopping a run: SIGINT, SIGTERM, or :meth:`StopSignals.request` from code.

The first request stops after the oldest round in flight that writes its own checkpoint
(every round, with the default ``supervision.checkpoint_every: 1``) is trained, scored
and committed; a later round in flight (Ray runs up to ``runtime.rounds_in_flight``) is
abandoned: its partial work is never committed, and a resume trains it again. When no
round in flight writes a checkpoint, they all finish and the last is checkpointed (a
cut needs every node quiet). A second request stops at once and keeps the last complete
checkpoint. Either way a checkpoint never mixes rounds (rayagg/rundir/manifest.py).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, Optional, Sequence


class Stopped(BaseException):
    """The run stopped on request. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows a stop raised by a signal handler.

    ``abandoned``: the rounds in flight were dropped (second request) rather than finished
    and checkpointed; ``dropped``: the later rounds in flight a first request abandoned
    once an earlier one was checkpointed; ``checkpoint_round``: the round a resume
    continues after (None: there is no checkpoint). The exit code is 128 + the signal number, as shells report
    a process ended by that signal (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, abandoned: bool, dropped: Sequence[int] = ()):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.abandoned, self.dropped = signum, abandoned, list(dropped)
        self.checkpoint_round: Optional[int] = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def stop_within(exc: Optional[BaseException]) -> Optional[Stopped]:
    """The :class:`Stopped` that ``exc`` is or wraps (its causes and contexts), else None.
    A signal handler that raises while a C extension runs (Ray's ``CoreWorker.wait``) has
    its exception come back as the context of a SystemError; the stop is still a stop."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Stopped):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class StopSignals:
    """Stop requests for one run, from SIGINT/SIGTERM or from code (tests, tools)."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.signum: Optional[int] = None
        self._echo = echo

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGINT) -> None:
        """First request: stop after the oldest round in flight is checkpointed (see the
        module). Second: raise :class:`Stopped` now."""
        if self.signum is not None:
            raise Stopped(signum, abandoned=True)
        self.signum = signum
        self._echo(f"rayagg: {signal.Signals(signum).name}: stopping after the oldest round in flight "
                   "is trained, scored and checkpointed (a later one is abandoned); signal again to "
                   "stop at once (the last complete checkpoint is kept)")

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Routes SIGINT and SIGTERM to :meth:`request` (main thread only: Python allows
        handlers nowhere else), restoring the previous handlers afterwards. Enter it after
        ``ray.init``, which installs a SIGTERM handler of its own that exits at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, lambda signum, frame: self.request(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
