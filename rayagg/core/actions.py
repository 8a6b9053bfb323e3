"""What supervision decides, as data: the failure policy, the action verbs and the decision.

:func:`rayagg.core.supervision.decide` and its siblings return these; an executor applies
them (rayagg/runtime/recovery.py): ``ray.kill``, restarts, re-parenting. Every action is
a logged transition of a node's lifecycle (``NodeStatus``) and an event of the same kind
(``EventKind``). Pure: no Ray, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Optional, Sequence

from rayagg.config import SupervisionConfig
from rayagg.core.events import EventKind
from rayagg.core.tree import Tree
from rayagg.errors import ConfigError, RayaggError

_DEFAULTS = SupervisionConfig()


class NoSurvivorError(RayaggError):
    """A death cannot be absorbed: no live node of the tier can adopt the orphans, or
    the root died and may not be restarted. ``node``, ``tier`` and ``orphans`` say which."""

    def __init__(self, message: str, *, node: str, tier: str, orphans: Sequence[str] = ()):
        super().__init__(message)
        self.node = node
        self.tier = tier
        self.orphans = tuple(orphans)


@dataclass(frozen=True, kw_only=True)
class FailurePolicy:
    """How long silence may last, how a silent node is probed, and what a death may cost.

    Restarts and replacements are capped per node name; re-parenting is a membership
    change and never spends that budget. The defaults are ``config.SupervisionConfig``'s.
    """

    heartbeat_interval_s: float = _DEFAULTS.heartbeat_interval_s
    max_missed: int = _DEFAULTS.max_missed
    restart_root: bool = _DEFAULTS.restart_root
    replace_dead: bool = _DEFAULTS.replace_dead
    max_restarts: int = _DEFAULTS.max_restarts
    # A node silent past the deadline is probed with this deadline before it is declared
    # dead; 0: silence alone kills (no probe).
    probe_timeout_s: float = _DEFAULTS.probe_timeout_s

    @classmethod
    def of(cls, config: SupervisionConfig) -> "FailurePolicy":
        return cls(heartbeat_interval_s=config.heartbeat_interval_s, max_missed=config.max_missed,
                   restart_root=config.restart_root, replace_dead=config.replace_dead,
                   max_restarts=config.max_restarts, probe_timeout_s=config.probe_timeout_s)

    def __post_init__(self) -> None:
        if not self.heartbeat_interval_s > 0:
            raise ConfigError(f"heartbeat_interval_s must be > 0, got {self.heartbeat_interval_s}")
        if self.max_missed < 1:
            raise ConfigError(f"max_missed must be >= 1, got {self.max_missed}")
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if not self.probe_timeout_s >= 0:
            raise ConfigError(f"probe_timeout_s must be >= 0 (0: no probe), got {self.probe_timeout_s}")

    @property
    def deadline_s(self) -> float:
        """Silence longer than this (strictly) makes a node dead."""
        return self.heartbeat_interval_s * self.max_missed


class Reason(str, Enum):
    MISSED_HEARTBEATS = "missed_heartbeats"  # silent past the deadline, with probes off
    UNANSWERED_PROBE = "unanswered_probe"  # silent past the deadline, and its host's probe went unanswered
    ACTOR_DIED = "actor_died"


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Action:
    """One verb for the executor; ``node`` is the node it is about."""

    node: str
    kind: ClassVar[EventKind]

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class DeclareDead(Action):
    """Kill ``node``'s actor (if it still runs) and stop expecting its heartbeats."""

    reason: Reason
    silent_s: Optional[float]  # now - last heartbeat; None if never seen
    kind: ClassVar[EventKind] = EventKind.DECLARE_DEAD

    def describe(self) -> str:
        silence = "never seen" if self.silent_s is None else f"silent {self.silent_s:.1f} s"
        return f"{self.node} declared dead: {self.reason.value} ({silence})"


@dataclass(frozen=True)
class Reparent(Action):
    """Move ``node`` (and its subtree) from its dead parent to ``new_parent``."""

    old_parent: str
    new_parent: str
    reason: Reason  # why old_parent died
    kind: ClassVar[EventKind] = EventKind.REPARENT

    def describe(self) -> str:
        return f"{self.node} moved {self.old_parent} -> {self.new_parent} ({self.old_parent} died)"


@dataclass(frozen=True)
class DropLeaf(Action):
    """Leave ``node`` out of the rounds; its bridge samples stay with its ancestors."""

    reason: Reason
    kind: ClassVar[EventKind] = EventKind.DROP_LEAF

    def describe(self) -> str:
        return f"{self.node} dropped from the rounds: {self.reason.value}"


@dataclass(frozen=True)
class Restart(Action):
    """Start a new actor for ``node`` restored from its checkpoint."""

    restarts: int  # restarts spent on this node name, this one included
    kind: ClassVar[EventKind] = EventKind.RESTART

    def describe(self) -> str:
        return f"{self.node} restarted from its checkpoint (restart {self.restarts})"


@dataclass(frozen=True)
class Rejoin(Action):
    """Start a new actor for the dead leaf ``node`` (restored from its checkpoint) under
    ``new_parent``."""

    old_parent: str
    new_parent: str
    restarts: int
    kind: ClassVar[EventKind] = EventKind.REJOIN

    def describe(self) -> str:
        moved = "" if self.new_parent == self.old_parent else f", moved from {self.old_parent}"
        return f"{self.node} re-joined under {self.new_parent}{moved} (restart {self.restarts})"


@dataclass(frozen=True)
class Join(Action):
    """Build the elastic device ``node`` (already encoded or restored) under ``parent``;
    ``returning``: it was in the tree before (it left or died) and comes back with its
    model."""

    parent: str
    returning: bool
    kind: ClassVar[EventKind] = EventKind.JOIN

    def describe(self) -> str:
        how = "returning with its model" if self.returning else "new, with its encoded shard"
        return f"{self.node} joined under {self.parent} ({how})"


@dataclass(frozen=True)
class Leave(Action):
    """The elastic device ``node`` leaves after its last round: it stops running, its
    bridge samples stay with its ancestors and its last checkpoint is kept."""

    kind: ClassVar[EventKind] = EventKind.LEAVE

    def describe(self) -> str:
        return f"{self.node} left (drained: its bridge samples stay with its ancestors)"


@dataclass(frozen=True)
class Rebalance(Action):
    """Move the live ``node`` (and its subtree) from ``old_parent`` to ``new_parent``
    between rounds: its bridge samples go to the new parent from the driver's refs and
    the old one drops them."""

    old_parent: str
    new_parent: str
    policy: str
    why: str = ""
    kind: ClassVar[EventKind] = EventKind.REBALANCE

    def describe(self) -> str:
        return f"{self.node} moved {self.old_parent} -> {self.new_parent} ({self.policy}{self.why})"


def describe(action: Action) -> str:
    """A one-line account of ``action`` for the run log."""
    return action.describe()


@dataclass(frozen=True)
class Decision:
    """What the supervisor tells the runner: the actions to apply, in order; the tree, the
    dead set and the devices that left (a subset of dead) once they are applied; and
    ``fatal``, a message, when a death cannot be absorbed (the run must stop)."""

    actions: tuple[Action, ...]
    tree: Tree
    dead: frozenset[str]
    left: frozenset[str] = frozenset()
    fatal: Optional[str] = None
