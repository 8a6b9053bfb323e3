"""The supervisor's decisions as pure code: who is dead, and what happens to the tree.

A supervisor actor stamps each heartbeat with its own ``time.monotonic()`` and learns of
deaths at once when a call raises ActorDiedError. It feeds both into a
:class:`SupervisorState` and asks :func:`decide` what to do. Silence is counted less the
supervisor's own stalls (rayagg/core/beats.py); a node silent past its deadline is one of
the :func:`suspects`, which the actor probes (unless ``probe_timeout_s`` is 0) and
declares :func:`unanswered` if its probe is not answered in time: only then does
:func:`decide` declare it dead; an executor applies the
returned actions (rayagg/core/actions.py: ``ray.kill``, spawning, telling parents about
new children). Nothing here imports Ray or torch, and time is passed in, so tests drive
it with plain floats.

What a death does depends on where the node sits:

* the root is restarted from its checkpoint (while ``FailurePolicy.max_restarts`` allows);
* a non-root, non-leaf node (an edge) hands each child, with its subtree, to a
  surviving node of its own tier chosen by the run's balancing policy (moves stay
  within a tier: Theorem 1), and is optionally replaced by a fresh actor restored from
  its checkpoint;
* a leaf (a device) leaves the rounds; its bridge samples stay with its ancestors.

A dead node keeps its place and name in the tree (a dead edge just has no children).
A node's lifecycle (``NodeStatus``) is read off the state with :func:`status`.

Elastic devices (rayagg/core/membership.py) :func:`join` and :func:`leave` at round
boundaries through the same state: a device that left is dead to supervision (no
heartbeats expected) and also in ``left``; joining spends no restart.

Every parent a node gets here comes from the balancing policy (rayagg/core/balance.py),
and :func:`rebalance` moves devices between edges at round boundaries, recording each
move's round so a moved device stays put for the policy's ``cooldown`` rounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Optional, Sequence

from rayagg.core import beats
from rayagg.core.actions import (Action, DeclareDead, DropLeaf, FailurePolicy, Join, Leave, NoSurvivorError,
                                 Reason, Rebalance, Rejoin, Reparent, Restart)
from rayagg.core.balance import BalancingPolicy
from rayagg.core.loads import loads_of, subtree_labels
from rayagg.nodes import NodeStatus, status_of
from rayagg.core.tree import Tree


@dataclass(frozen=True)
class SupervisorState:
    """Everything :func:`decide` needs besides ``now``. Never mutated: every function
    here returns a new state."""

    tree: Tree
    last_seen: Mapping[str, float]  # node -> monotonic stamp of its last heartbeat
    started_at: float  # a node never seen counts as silent since then
    dead: frozenset[str] = frozenset()  # declared dead; stays dead unless restarted
    reported: frozenset[str] = frozenset()  # deaths reported by failed calls since the last decide
    restarts: Mapping[str, int] = field(default_factory=dict)  # restarts spent per node name
    # Restarted (or re-joined) but not heard from since: silence does not count against
    # them until their first heartbeat, because the executor brings them back only after
    # its current wait ends; its start-up timeout bounds how long that may take.
    starting: frozenset[str] = frozenset()
    load: Mapping[str, int] = field(default_factory=dict)  # bridge samples per node; missing = 0
    left: frozenset[str] = frozenset()  # elastic devices that left (also in dead)
    policy: FailurePolicy = FailurePolicy()
    balancing: BalancingPolicy = BalancingPolicy()  # chooses every parent; rebalances (limits.cooldown)
    labels: Mapping[str, Sequence[int]] = field(default_factory=dict)  # leaf -> label counts
    speed: Mapping[str, float] = field(default_factory=dict)  # parent -> seconds per sample, measured
    moved_at: Mapping[str, int] = field(default_factory=dict)  # node -> round it last moved
    unanswered: frozenset[str] = frozenset()  # probed and silent since the last decide: dead next
    stalls: beats.Stalls = beats.Stalls()  # spans the supervisor was not scheduled: nobody's silence

    @classmethod
    def start(cls, tree: Tree, now: float, *, policy: FailurePolicy = FailurePolicy(),
              load: Optional[Mapping[str, int]] = None, balancing: BalancingPolicy = BalancingPolicy(),
              labels: Optional[Mapping[str, Sequence[int]]] = None) -> "SupervisorState":
        """Supervision of ``tree`` beginning at ``now``, nothing seen yet."""
        return cls(tree=tree, last_seen={}, started_at=now, load=dict(load or {}), policy=policy,
                   balancing=balancing, labels=dict(labels or {}))


def status(state: SupervisorState, node: str) -> NodeStatus:
    """Where ``node`` is in its lifecycle, as this state records it."""
    return status_of(node, in_tree=state.tree.tier_of, dead=state.dead, left=state.left, starting=state.starting)


def heartbeat(state: SupervisorState, node: str, now: float) -> SupervisorState:
    """Records ``node``'s heartbeat arriving at ``now``; see :func:`heartbeats`."""
    return heartbeats(state, [node], now)


def heartbeat_ages(state: SupervisorState, now: float) -> dict[str, float]:
    """node -> seconds of silence at ``now``, counted as :func:`decide` counts it (a node
    never heard from since ``started_at``), for the live nodes of the tree; a restarting
    node is left out until it is heard from, as its silence does not count yet."""
    return {node: silence_s(state, node, now)
            for node in state.tree.nodes if node not in state.dead and node not in state.starting}


def silence_s(state: SupervisorState, node: str, now: float) -> float:
    """Seconds ``node`` has been silent at ``now`` (since ``started_at`` if never heard
    from), the supervisor's own stalls discounted."""
    return beats.silence_s(state.last_seen.get(node, state.started_at), now, state.stalls)


def suspects(state: SupervisorState, now: float) -> list[str]:
    """The live nodes silent past the deadline at ``now`` that nothing has condemned yet
    (no failed call, no unanswered probe), in tree order: the nodes to probe."""
    condemned = state.dead | state.reported | state.unanswered | state.starting
    return [node for node in state.tree.nodes
            if node not in condemned and silence_s(state, node, now) > state.policy.deadline_s]


def unanswered(state: SupervisorState, nodes: Iterable[str]) -> SupervisorState:
    """Records that ``nodes``' host did not answer a probe in time (or answered without
    them): the next :func:`decide` declares them dead. Dead nodes and nodes not in the
    tree are ignored."""
    nodes = {n for n in nodes if n in state.tree.tier_of and n not in state.dead}
    return replace(state, unanswered=state.unanswered | nodes) if nodes else state


def stalled(state: SupervisorState, start: float, end: float) -> SupervisorState:
    """Records that the supervisor was not scheduled from ``start`` to ``end``: that span
    is no node's silence. Spans before every live node's last heartbeat are forgotten."""
    seen = [state.last_seen.get(n, state.started_at) for n in state.tree.nodes if n not in state.dead]
    return replace(state, stalls=state.stalls.add(start, end).after(min(seen, default=end)))


def heartbeats(state: SupervisorState, nodes: Iterable[str], now: float) -> SupervisorState:
    """Records one host actor's heartbeat arriving at ``now``: it covers every node the
    host runs (a host that dies goes silent for all of them at once). Dead nodes are
    ignored (their actor is being killed or they left their host), and so are nodes not
    in the tree: an elastic device built on its host and encoding, before it joins."""
    last_seen, heard = dict(state.last_seen), set()
    for node in nodes:
        if node in state.tree.tier_of and node not in state.dead:
            last_seen[node] = max(now, last_seen.get(node, now))  # a late stamp never rewinds
            heard.add(node)
    return replace(state, last_seen=last_seen, starting=state.starting - heard)


def report_death(state: SupervisorState, node: str) -> SupervisorState:
    """Records that a call to ``node`` raised ActorDiedError; the next :func:`decide`
    declares it dead whatever the clock says. Raises ValueError for an unknown node."""
    _check_node(state, node)
    if node in state.dead:
        return state
    return replace(state, reported=state.reported | {node})


def dead_after_s(state: SupervisorState, node: str, now: float) -> float:
    """Seconds until ``node`` would be declared dead for silence; negative if overdue."""
    return state.policy.deadline_s - silence_s(state, node, now)


def place(state: SupervisorState, node: str, candidates: Iterable[str]) -> str:
    """The parent the balancing policy gives ``node`` among ``candidates`` (live nodes of
    the tier above it), judged as if ``node`` hung under none of them yet. Raises
    ValueError if there are no candidates."""
    candidates = set(candidates)
    tree = state.tree
    if not candidates:
        raise ValueError(f"no candidate parent for {node}")
    tier = next(iter(tree.tier_of[c] for c in candidates))
    dead = frozenset(n for n in tree.nodes_of_tier(tier) if n not in candidates)
    loads = loads_of(tree, tier, dead=dead, samples=state.load, labels=state.labels, speed=state.speed)
    if any(node in kids for kids in loads.children.values()):
        loads = loads.without(node)
    return state.balancing.place(loads, node, state.load.get(node, 0),
                               subtree_labels(tree, node, state.labels) if node in tree.tier_of
                               else tuple(state.labels.get(node, ())) or None)


SPEED_SMOOTHING = 0.5  # weight of the last round in an edge's seconds per sample


def rebalance(state: SupervisorState, round_index: int,
              busy_s: Mapping[str, float]) -> tuple[SupervisorState, list[Rebalance]]:
    """Between rounds, before ``round_index``: records the edges' (the tier above the
    leaves) seconds per bridge sample from ``busy_s`` (each edge's busy seconds in the
    last round, smoothed with the earlier rounds') and moves the live devices the
    balancing policy decides, none that moved within ``cooldown`` rounds."""
    tree = state.tree
    tier = len(tree.tier_names) - 2
    if tier < 1:  # the root is the only parent: nowhere to move to
        return state, []
    speed = dict(state.speed)
    for parent, seconds in busy_s.items():
        if parent in tree.tier_of and tree.tier_of[parent] == tier and state.load.get(parent, 0) > 0:
            measured = seconds / state.load[parent]
            # Smoothed: one noisy round must not move devices that the next moves back.
            speed[parent] = SPEED_SMOOTHING * measured + (1 - SPEED_SMOOTHING) * speed.get(parent, measured)
    state = replace(state, speed=speed)
    loads = loads_of(tree, tier, dead=state.dead, samples=state.load, labels=state.labels, speed=speed)
    cooldown = state.balancing.limits.cooldown
    settled = lambda child: round_index - state.moved_at.get(child, -cooldown - 1) > cooldown
    movable = [child for kids in loads.children.values() for child in kids
               if child not in state.dead and settled(child)]
    actions = []
    for move in state.balancing.moves(loads, movable):
        why = state.balancing.explain(loads, move)
        loads = loads.with_move(move)
        state = _move(state, move.node, move.new_parent)
        state = replace(state, moved_at={**state.moved_at, move.node: round_index})
        actions.append(Rebalance(move.node, move.old_parent, move.new_parent, state.balancing.name, f": {why}"))
    return state, actions


# ---------------------------------------------------------------------------- decide


def decide(state: SupervisorState, now: float) -> tuple[SupervisorState, list[Action]]:
    """Declares newly dead nodes and absorbs their deaths: those a failed call reported,
    those whose probe went unanswered, and, with ``probe_timeout_s`` 0, those silent past
    the deadline.

    Returns the new state (``reported`` and ``unanswered`` cleared) and the actions, in this order: one
    DeclareDead per newly dead node, then the consequences of each death (root first,
    then tier by tier, index order within a tier). All DeclareDeads come first so the
    executor knows every dead actor before it applies any move.

    A dead orphan (a device dying in the same tick as its edge) is still moved to a live
    node, so its samples stay accounted for under a live ancestor, and then dropped. No
    orphan ever goes to a node that died in this tick, even one restarted in it. With
    ``replace_dead`` a dead non-root, non-leaf node is restarted in place while its
    restarts last, and its children stay with it; once they are spent they move.

    Raises NoSurvivorError when a dead edge's tier has no live node to adopt its
    children (and the edge itself may not be replaced), or when the root died and may
    not be restarted.
    """
    deaths = _newly_dead(state, now)
    excluded = state.dead | {death.node for death in deaths}
    actions: list[Action] = list(deaths)
    state = replace(state, dead=excluded, reported=frozenset(), unanswered=frozenset())
    for death in deaths:
        state, consequences = _absorb(state, death, excluded, now)
        actions.extend(consequences)
    return state, actions


def _newly_dead(state: SupervisorState, now: float) -> list[DeclareDead]:
    deaths = []
    for node in state.tree.nodes:  # root first, then tier by tier, index order
        if node in state.dead:
            continue
        seen = state.last_seen.get(node)
        silent_s = None if seen is None else beats.silence_s(seen, now, state.stalls)
        if node in state.reported:
            deaths.append(DeclareDead(node, Reason.ACTOR_DIED, silent_s))
        elif node in state.unanswered:
            deaths.append(DeclareDead(node, Reason.UNANSWERED_PROBE, silent_s))
        elif (state.policy.probe_timeout_s == 0 and node not in state.starting
              and silence_s(state, node, now) > state.policy.deadline_s):
            deaths.append(DeclareDead(node, Reason.MISSED_HEARTBEATS, silent_s))
    return deaths


def _absorb(state: SupervisorState, death: DeclareDead, excluded: frozenset[str],
            now: float) -> tuple[SupervisorState, list[Action]]:
    tree = state.tree
    if death.node == tree.root:
        return _restart_root(state, now)
    if tree.is_leaf(death.node):
        return state, [DropLeaf(death.node, death.reason)]
    return _adopt_orphans(state, death, excluded, now)


def _restart_root(state: SupervisorState, now: float) -> tuple[SupervisorState, list[Action]]:
    root, policy = state.tree.root, state.policy
    if not policy.restart_root:
        why = "restarts are disabled (restart_root=False)"
    elif not _may_restart(state, root):
        why = f"restarts are exhausted ({policy.max_restarts} of {policy.max_restarts} spent)"
    else:
        state, restart = _restart(state, root, now)
        return state, [restart]
    raise NoSurvivorError(f"root {root} died and {why}", node=root, tier=state.tree.tier_name(root))


def _adopt_orphans(state: SupervisorState, death: DeclareDead, excluded: frozenset[str],
                   now: float) -> tuple[SupervisorState, list[Action]]:
    node, tree = death.node, state.tree
    if state.policy.replace_dead and _may_restart(state, node):
        # The replacement keeps the children: it is up, restored from its checkpoint and
        # given their bridge samples again before the retried round starts, so moving
        # them away and back would change nothing but the log.
        state, restart = _restart(state, node, now)
        return state, [restart]
    orphans = tree.children(node)
    survivors = [n for n in tree.nodes_of_tier(tree.tier_of[node]) if n not in excluded]
    if orphans and not survivors:
        raise NoSurvivorError(
            f"{node} died and no {tree.tier_name(node)} survives to adopt {', '.join(orphans)}",
            node=node, tier=tree.tier_name(node), orphans=orphans)
    actions: list[Action] = []
    for orphan in orphans:
        new_parent = place(state, orphan, survivors)
        state = _move(state, orphan, new_parent)
        actions.append(Reparent(orphan, node, new_parent, death.reason))
    return state, actions


def rejoin(state: SupervisorState, node: str, now: float) -> tuple[SupervisorState, Rejoin]:
    """A dead leaf comes back: it re-joins under the live node of the tier above the
    balancing policy chooses, with a fresh deadline, spending one restart.

    Raises ValueError unless ``node`` is a dead leaf, NoSurvivorError when its restarts
    are spent or no node of the tier above is alive.
    """
    _check_node(state, node)
    tree = state.tree
    if not tree.is_leaf(node) or node not in state.dead:
        raise ValueError(f"{node} is not a dead leaf")
    tier = tree.tier_name(node)
    if not _may_restart(state, node):
        raise NoSurvivorError(f"{node} may not re-join: {state.policy.max_restarts} restarts spent",
                              node=node, tier=tier)
    parents = [n for n in tree.nodes_of_tier(tree.tier_of[node] - 1) if n not in state.dead]
    if not parents:
        raise NoSurvivorError(f"{node} cannot re-join: no node of the tier above is alive",
                              node=node, tier=tier)
    old_parent, new_parent = tree.parent_of[node], place(state, node, parents)
    if new_parent != old_parent:
        state = _move(state, node, new_parent)
    state, restart = _restart(state, node, now)
    return state, Rejoin(node, old_parent, new_parent, restart.restarts)


def join(state: SupervisorState, node: str, samples: int, now: float) -> tuple[SupervisorState, Join]:
    """The elastic device ``node`` joins under the live node of the tier above the
    balancing policy chooses (``none``: the fewest bridge samples). A new
    device enters the tree, its ``samples`` counted in its new ancestors' load; a
    returning one (a dead or left leaf) is no longer dead and may move. Either way it
    has a fresh deadline from its first heartbeat and spends no restart.

    Raises ValueError for a node that is live already, NoSurvivorError when no node of
    the tier above is alive.
    """
    tree = state.tree
    returning = node in tree.tier_of
    if returning and (not tree.is_leaf(node) or node not in state.dead):
        raise ValueError(f"{node} is not a leaf that is away: it cannot join")
    above = len(tree.tier_names) - 2
    parents = [n for n in tree.nodes_of_tier(above) if n not in state.dead]
    if not parents:
        raise NoSurvivorError(f"{node} cannot join: no {tree.tier_names[above]} is alive",
                              node=node, tier=tree.tier_names[-1])
    state = replace(state, load={**state.load, node: samples}) if not returning else state
    parent = place(state, node, parents)
    if returning:
        if parent != tree.parent_of[node]:
            state = _move(state, node, parent)
    else:
        load = dict(state.load)
        for holder in [parent, *tree.ancestors(parent)]:
            load[holder] = load.get(holder, 0) + samples
        state = replace(state, tree=tree.with_leaf(node, parent), load=load)
    state = replace(state, dead=state.dead - {node}, left=state.left - {node},
                    last_seen={**state.last_seen, node: now}, starting=state.starting | {node})
    return state, Join(node, parent, returning)


def leave(state: SupervisorState, node: str) -> tuple[SupervisorState, Leave]:
    """The live leaf ``node`` leaves: dead to supervision (no heartbeats expected) and in
    ``left``; its load stays with its ancestors, which keep its bridge samples. Raises
    ValueError unless ``node`` is a live leaf."""
    _check_node(state, node)
    if not state.tree.is_leaf(node) or node in state.dead:
        raise ValueError(f"{node} is not a live leaf: it cannot leave")
    return replace(state, dead=state.dead | {node}, left=state.left | {node}), Leave(node)


def _move(state: SupervisorState, orphan: str, new_parent: str) -> SupervisorState:
    """Re-parents ``orphan``; its subtree's samples leave the old ancestors' loads and
    join the new ones' (common ancestors see no change)."""
    tree, samples = state.tree, state.load.get(orphan, 0)
    delta: dict[str, int] = {}
    for ancestor in tree.ancestors(orphan):
        delta[ancestor] = delta.get(ancestor, 0) - samples
    for ancestor in [new_parent, *tree.ancestors(new_parent)]:
        delta[ancestor] = delta.get(ancestor, 0) + samples
    load = dict(state.load)
    for ancestor, change in delta.items():
        if change:
            load[ancestor] = max(0, load.get(ancestor, 0) + change)
    return replace(state, tree=tree.with_parent(orphan, new_parent), load=load)


def _restart(state: SupervisorState, node: str, now: float) -> tuple[SupervisorState, Restart]:
    """``node`` comes back: no longer dead, a fresh deadline from ``now`` that runs from its
    first heartbeat (it is ``starting`` until then), one restart spent."""
    count = state.restarts.get(node, 0) + 1
    state = replace(state, dead=state.dead - {node},
                    last_seen={**state.last_seen, node: now},
                    restarts={**state.restarts, node: count}, starting=state.starting | {node})
    return state, Restart(node, count)


def _may_restart(state: SupervisorState, node: str) -> bool:
    return state.restarts.get(node, 0) < state.policy.max_restarts


def _check_node(state: SupervisorState, node: str) -> None:
    if node not in state.tree.tier_of:
        raise ValueError(f"{node} is not a node of the tree")

