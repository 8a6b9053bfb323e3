"""The run's host actors: which host carries which node, and their lifecycle.

The packing (rayagg/core/packing.py) fixes each host's name, tier and nodes, so a host's
Ray request is always the sum of its laid-out nodes' requests. A host that dies is
created again under the same name (and the same request) when one of its nodes is
restarted, re-joins or (elastic devices) joins; a node that dies or leaves alone is
forgotten by its host, whose other nodes carry on; a host left with no node is killed,
which frees its resources (and lets an autoscaler remove an idle machine). The pool
calls the run's fault hook (rayagg/runtime/faults.py) after each call it submits and
after hosts start.

Under ``data.source: driver`` the pool puts the test split into Ray's object store once
and each host's shards (every leaf of its layout, elastic ones too) once, and holds those
refs for the run: every host, restarted ones included, is created from the same objects.
"""
from __future__ import annotations

import pathlib
from typing import Any, Iterable, Optional, Sequence

import ray

from rayagg.core import packing
from rayagg.errors import NodeDiedError, NodeTimeoutError, RunDirError
from rayagg.learning.data import Dataset
from rayagg.learning.plan import Plan, load_data, raw_shard, raw_test_split
from rayagg.rundir.directory import end_probe, start_probe
from rayagg.runtime import batching
from rayagg.runtime.cluster import cluster_nodes
from rayagg.runtime.faults import FaultAt, FaultHook, FaultPoint, no_faults
from rayagg.runtime.host import HostReport, NodeHost
from rayagg.runtime.resources import actor_options, ray_request
from rayagg.runtime.waiting import Call, await_all, kill


class HostPool:
    """Creates, revives and stops the host actors of one run, and routes calls to nodes."""

    def __init__(self, plan: Plan, namespace: str, *, heartbeat_interval_s: float, timeout_s: float,
                 faults: FaultHook = no_faults, dataset: Optional[Dataset] = None):
        self._plan = plan
        self._dataset = dataset  # the plan's data set, if the caller holds it (data.source: driver)
        self._namespace = namespace
        self._interval_s = heartbeat_interval_s
        self._timeout_s = timeout_s
        self._faults = faults
        self.layout = {host.name: host for host in packing.pack(plan.config)}
        self.home = packing.home_hosts(list(self.layout.values()))
        self.handles: dict[str, Any] = {}  # host -> actor handle, for hosts alive
        self.carried: dict[str, set[str]] = {}  # host -> the nodes it runs now
        self.placement: dict[str, HostReport] = {}  # host -> where it runs (its ready() answer)
        self._plan_ref: Any = None
        self._test_ref: Any = None  # data.source: driver: the test split, shared by every host
        self._shard_refs: dict[str, Any] = {}  # host -> its leaves' shards (data.source: driver)
        self._supervisor: Any = None
        self._run_dir: Any = None  # RUN_DIR once probed: hosts created later are probed too

    def start(self, nodes: Iterable[str], supervisor: Any) -> None:
        """Creates the hosts of ``nodes``, each building its nodes among them, and waits
        until every one runs and sends heartbeats to ``supervisor``."""
        self._plan_ref = ray.put(self._plan)
        if self._plan.config.data.source == "driver":
            self._ship_data()
        self._supervisor = supervisor
        wanted: dict[str, list[str]] = {}
        for node in nodes:
            wanted.setdefault(self.home[node], []).append(node)
        for host, its_nodes in wanted.items():
            self._create(host, its_nodes)
        self._wait_started(list(wanted))

    def probe_run_dir(self, run_dir: pathlib.Path, hosts: Optional[Sequence[str]] = None) -> None:
        """Raises RunDirError unless every host (or each of ``hosts``) sees RUN_DIR as the
        driver does and can write there: a run directory on one machine's own disk, or a
        store a machine cannot reach, fails here rather than at the first checkpoint of a
        node on another machine. Hosts created later (restarts, re-joins, joining
        devices: :meth:`revive`) are probed the same way before their nodes are restored."""
        self._run_dir = run_dir
        token = start_probe(run_dir)
        try:
            calls = [Call(host, "probe_run_dir", self.handles[host].probe_run_dir.remote(str(run_dir), token))
                     for host in (list(self.handles) if hosts is None else hosts)]
            answers = (await_all(calls, self._timeout_s) if hosts is None
                       else list(self._survivors_answers(calls).values()))
        finally:
            end_probe(run_dir)
        problems = [answer for answer in answers if answer is not None]
        if problems:
            raise RunDirError(f"{run_dir} is not usable from every machine of the run: "
                              f"{'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}. On a "
                              "multi-machine cluster RUN_DIR must be shared storage mounted at the same "
                              "path everywhere, or an s3:// or gs:// URI every machine reaches with its own "
                              "environment's credentials (choose it with --out or output.base_dir)")

    def _survivors_answers(self, calls: list[Call]) -> dict[str, Any]:
        """The answers (call's node -> answer) of hosts created mid-run, leaving out any
        that died meanwhile: a host lost right after it started is a death like any other,
        handled by the caller's recovery, not a reason to fail the run."""
        answers = {}
        for call in calls:  # all submitted already: they run at once, each waited for in turn
            try:
                answers[call.node], = await_all([call], self._timeout_s)
            except NodeDiedError:
                pass
        return answers

    def actor(self, node: str) -> Any:
        """The handle of the host running ``node``."""
        return self.handles[self.home[node]]

    @property
    def actors(self) -> dict[str, Any]:
        """node -> the handle of its host, for every node running now."""
        return {node: self.handles[host] for host, nodes in self.carried.items() for node in nodes}

    def call(self, node: str, method: str, *args: Any) -> Call:
        """Submits ``host.method(node, *args)`` to ``node``'s host."""
        call = Call(node, method, getattr(self.actor(node), method).remote(node, *args))
        self._faults(FaultPoint(FaultAt.CALL_SUBMITTED, node=node, method=method))
        return call

    def call_batch(self, requests: Sequence[batching.Item]) -> list[Call]:
        """Submits ``requests``, each (node, method, arguments after the node), to their
        one host as a single call that runs them in order (rayagg/runtime/batching.py);
        returns a Call per request, each with the ref of that request's own answer."""
        host = {self.home[node] for node, _, _ in requests}
        if len(host) != 1:
            raise ValueError(f"a batch runs on one host, these requests go to {sorted(host)}")
        items, refs = batching.lift(requests, lambda arg: isinstance(arg, ray.ObjectRef))
        answers = self.handles[host.pop()].run_batch.options(num_returns=len(items)).remote(items, *refs)
        answers = [answers] if len(items) == 1 else answers
        calls = [Call(node, method, ref) for (node, method, _), ref in zip(requests, answers)]
        for node, method, _ in requests:
            self._faults(FaultPoint(FaultAt.CALL_SUBMITTED, node=node, method=method))
        return calls

    def ask(self, nodes: Sequence[str], method: str, *args: Any) -> dict[str, Any]:
        """``method`` of each of ``nodes`` (on their hosts, after the calls queued before),
        waited for by the start-up timeout without recovery; node -> its answer. For
        tools and tests that look at a run's nodes from an observer."""
        calls = [self.call(node, method, *args) for node in nodes]
        return dict(zip(nodes, await_all(calls, self._timeout_s)))

    def nodes_of_actor(self, actor_id: str) -> set[str]:
        """The nodes a (dead) host actor runs; empty for an actor already retired or
        replaced (a new host under the same name is another actor) or unknown."""
        for host, handle in self.handles.items():
            if handle._actor_id.hex() == actor_id:
                return set(self.carried[host])
        return set()

    def retire(self, nodes: Iterable[str]) -> None:
        """Stops running ``nodes`` (declared dead): a host left with none is killed, any
        other host forgets just them and its other nodes carry on."""
        by_host: dict[str, set[str]] = {}
        for node in nodes:
            by_host.setdefault(self.home[node], set()).add(node)
        for host, dead in by_host.items():
            if host not in self.handles:
                continue
            self.carried[host] -= dead
            if not self.carried[host]:
                kill(self.handles.pop(host))
                del self.carried[host]
            else:
                for node in sorted(dead):
                    self.handles[host].remove_node.remote(node)

    def revive(self, nodes: list[str]) -> set[str]:
        """Builds ``nodes`` afresh on their home hosts (restarts, re-joins, joining devices),
        creating a host again (same name and request) where it is gone, and waits until
        every one runs. With an autoscaler, a host that fits no machine yet waits for one
        (up to the start-up timeout). The caller restores checkpoints.

        Returns the nodes lost meanwhile: every node of a host that died before it
        answered (its machine lost during a restart). That is a death like any other, for
        the caller to report, not a reason to end the run; the other nodes run."""
        adding, creating = [], {}
        for node in nodes:
            host = self.home[node]
            if host in self.handles:
                adding.append(Call(host, "add_node", self.handles[host].add_node.remote(node)))
                self.carried[host].add(node)
            else:
                creating.setdefault(host, []).append(node)
        for host, its_nodes in creating.items():
            self._create(host, its_nodes)
        self._faults(FaultPoint(FaultAt.HOSTS_CREATED, hosts=tuple(creating)))
        lost = {call.node for call in adding} - set(self._survivors_answers(adding))
        if creating:
            started = self._wait_started(list(creating), survivors_only=True)
            lost |= set(creating) - started
            if self._run_dir is not None and started:
                self.probe_run_dir(self._run_dir, sorted(started))
        return {node for host in lost for node in self.carried.get(host, ())}

    def close(self) -> None:
        for handle in self.handles.values():
            kill(handle)
        self.handles, self.carried = {}, {}
        self._test_ref, self._shard_refs = None, {}  # the driver's refs: freed with the run

    def data_args(self, host: str) -> tuple[Any, ...]:
        """What ``NodeHost`` takes after its nodes: the refs of the test split and of
        ``host``'s shards under ``data.source: driver``; nothing under ``local``."""
        if self._test_ref is None:
            return ()
        return self._test_ref, self._shard_refs[host]

    def _ship_data(self) -> None:
        """Puts the test split and each host's shards (uint8) into Ray's object store, one
        object per host: the hosts never load the data set. Loads the data set here unless
        the caller handed it over; raises DataError when it cannot be found."""
        plan, dataset = self._plan, self._dataset or load_data(self._plan.config)
        self._test_ref = ray.put(raw_test_split(plan, dataset))
        self._shard_refs = {
            host: ray.put({leaf: raw_shard(plan, leaf, dataset) for leaf in layout.nodes if plan.is_leaf(leaf)})
            for host, layout in self.layout.items()}
        self._dataset = None  # the objects hold what the hosts need

    def _create(self, host: str, nodes: list[str]) -> None:
        layout = self.layout[host]
        tier = self._plan.tier(layout.nodes[0])
        handle = NodeHost.options(
            name=host, namespace=self._namespace, max_restarts=0,
            **actor_options(tier.resources, len(layout.nodes)),
        ).remote(self._plan_ref, host, nodes, *self.data_args(host))
        self.handles[host], self.carried[host] = handle, set(nodes)

    def _wait_started(self, hosts: list[str], survivors_only: bool = False) -> set[str]:
        """Waits until ``hosts`` run and heartbeat; records where each one runs; returns
        the hosts that do. A host that dies first raises NodeDiedError or, with
        ``survivors_only`` (hosts created mid-run: see :meth:`revive`), is left out."""
        def answers(calls: list[Call]) -> dict[str, Any]:
            if survivors_only:
                return self._survivors_answers(calls)
            return dict(zip((call.node for call in calls), await_all(calls, self._timeout_s)))

        try:
            ready = answers([Call(host, "start", self.handles[host].ready.remote()) for host in hosts])
            self.placement.update(ready)
            beating = answers([Call(host, "start_heartbeats",
                                    self.handles[host].start_heartbeats.remote(self._supervisor, self._interval_s))
                               for host in ready])
        except NodeTimeoutError as exc:
            raise NodeTimeoutError(exc.node, f"{exc} — {self._unscheduled_hint(exc.node)}") from exc
        self._faults(FaultPoint(FaultAt.HOSTS_STARTED, hosts=tuple(beating)))
        return set(beating)

    def _unscheduled_hint(self, host: str) -> str:
        layout = self.layout[host]
        request = ray_request(self._plan.tier(layout.nodes[0]).resources, len(layout.nodes))
        cluster = "; ".join(n.describe() for n in cluster_nodes())
        return f"not scheduled? it requests {request}; the cluster has: {cluster}"
