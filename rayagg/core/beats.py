"""Heartbeats as data: how long a node has been silent, whose fault the silence is, and
whom to probe before silence may kill. Pure: no Ray, time passed in.

Silence alone is a weak sign of death on a shared machine: a host whose process is not
scheduled (other work on the cores, a long GC pause, a torch call holding the GIL) stops
sending, and a supervisor that is not scheduled stops hearing. So:

* every heartbeat carries a :class:`Stamp` (the host, a count, and when the host sent
  it by its own monotonic clock): the gap between two sends is the sender's doing (a
  starved sender), the gap between two arrivals less that is the way's or the
  supervisor's;
* the supervisor notes the spans in which it was itself not scheduled
  (:func:`own_stall`, :class:`Stalls`) and does not count them as anyone's silence
  (:func:`silence_s`);
* a node silent past its deadline is a suspect, not a corpse: the supervisor probes its
  host with a direct call and a deadline (:func:`to_probe`); an answer keeps it alive, no
  answer kills it (rayagg/core/supervision.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Optional


@dataclass(frozen=True)
class Stamp:
    """What a host puts on each heartbeat: its name, how many it sent before, and when it
    sent this one by its own ``time.monotonic()`` (only ever compared with its own). Beat
    0 is the synchronous one a host sends before its beating thread starts."""

    host: str
    seq: int
    sent_at: float


@dataclass(frozen=True)
class Sender:
    """What the supervisor knows of one host's heartbeats."""

    seq: int
    sent_at: float  # the host's clock
    arrived_at: float  # the supervisor's clock
    max_send_gap_s: float = 0.0  # the longest the host went between two sends (it was starved)
    max_silence_s: float = 0.0  # the longest between two arrivals, the supervisor's stalls discounted


def received(sender: Optional[Sender], stamp: Stamp, now: float, stalls: "Stalls") -> Sender:
    """``sender`` after ``stamp`` arrived at ``now``. A stamp older than the last one (calls
    to an async actor may run out of order) updates nothing but the silence."""
    if sender is None:
        return Sender(stamp.seq, stamp.sent_at, now)
    silence = silence_s(sender.arrived_at, now, stalls)
    if stamp.seq <= sender.seq:
        return replace(sender, arrived_at=max(now, sender.arrived_at),
                       max_silence_s=max(sender.max_silence_s, silence))
    # Beats lost on the way do not count. Nor does the wait after beat 0: a host sends it
    # and waits for the supervisor's answer before its beating thread starts.
    gap = 0.0 if sender.seq == 0 else (stamp.sent_at - sender.sent_at) / (stamp.seq - sender.seq)
    return Sender(stamp.seq, stamp.sent_at, now, max(sender.max_send_gap_s, gap), max(sender.max_silence_s, silence))


# ---------------------------------------------------------------------------- the supervisor's own stalls


@dataclass(frozen=True)
class Stalls:
    """Spans ``(start, end)`` of the supervisor's clock in which it was not scheduled, in
    order and disjoint."""

    spans: tuple[tuple[float, float], ...] = ()

    def add(self, start: float, end: float) -> "Stalls":
        """These stalls and ``[start, end]`` (merged with an overlapping last span)."""
        if end <= start:
            return self
        if self.spans and start <= self.spans[-1][1]:
            last = self.spans[-1]
            return Stalls(self.spans[:-1] + ((last[0], max(last[1], end)),))
        return Stalls(self.spans + ((start, end),))

    def within(self, since: float, until: float) -> float:
        """Seconds of stall between ``since`` and ``until``."""
        return sum(max(0.0, min(end, until) - max(start, since)) for start, end in self.spans)

    def after(self, time: float) -> "Stalls":
        """Only the spans that end after ``time`` (older ones can discount nothing)."""
        return Stalls(tuple(span for span in self.spans if span[1] > time))

    @property
    def total_s(self) -> float:
        return sum(end - start for start, end in self.spans)


def own_stall(awake_at: float, now: float, period_s: float, tolerance_s: float) -> Optional[tuple[float, float]]:
    """The supervisor last ran at ``awake_at`` and was due to run again at most ``period_s``
    later (its watcher's sleep); it runs at ``now``. If that is more than ``tolerance_s``
    late, it was not scheduled from ``awake_at + period_s`` to ``now``: that span; else
    None."""
    due = awake_at + period_s
    return (due, now) if now - due > tolerance_s else None


def silence_s(last_seen: float, now: float, stalls: Stalls) -> float:
    """Seconds of silence from ``last_seen`` to ``now``, less the supervisor's own stalls in
    between (a heartbeat that waited in its queue was not the node's silence)."""
    return max(0.0, now - last_seen - stalls.within(last_seen, now))


# ---------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Probes:
    """The probes of a run: hosts with one in flight (host -> when it was sent), and counts."""

    in_flight: Mapping[str, float] = field(default_factory=dict)
    sent: int = 0
    answered: int = 0
    unanswered: int = 0

    def send(self, host: str, now: float) -> "Probes":
        return replace(self, in_flight={**self.in_flight, host: now}, sent=self.sent + 1)

    def done(self, host: str, answered: bool) -> "Probes":
        in_flight = {h: t for h, t in self.in_flight.items() if h != host}
        return replace(self, in_flight=in_flight, answered=self.answered + answered,
                       unanswered=self.unanswered + (not answered))


def to_probe(suspects: Iterable[str], host_of: Mapping[str, str],
             probes: Probes) -> tuple[dict[str, list[str]], list[str]]:
    """(host -> its suspects, for hosts with no probe in flight; the suspects whose host is
    not known: no heartbeat ever named one, so there is nothing to probe)."""
    hosts: dict[str, list[str]] = {}
    unknown = []
    for node in suspects:
        host = host_of.get(node)
        if host is None:
            unknown.append(node)
        elif host not in probes.in_flight:
            hosts.setdefault(host, []).append(node)
    return hosts, unknown


@dataclass(frozen=True)
class Report:
    """What heartbeats and probes did in a run (the supervisor's ``heartbeat_report``)."""

    probes_sent: int
    probes_answered: int
    probes_unanswered: int
    max_silence_s: float  # the longest silence any host's beats showed, stalls discounted
    max_send_gap_s: float  # the longest any host's heartbeat thread went between sends
    supervisor_stalled_s: float  # seconds the supervisor itself was not scheduled (noted spans)


def report(senders: Mapping[str, Sender], probes: Probes, stalled_s: float) -> Report:
    return Report(probes.sent, probes.answered, probes.unanswered,
                  max((s.max_silence_s for s in senders.values()), default=0.0),
                  max((s.max_send_gap_s for s in senders.values()), default=0.0), stalled_s)
