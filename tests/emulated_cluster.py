"""An emulated multi-machine Ray cluster on one computer, for tests and benchmarks.

:func:`emulated_cluster` reads a cluster definition in the cluster launcher's form
(``cluster/emulated-8.yaml``: ``available_node_types`` with ``resources``, ``labels`` and
``min_workers``) and starts each machine as a raylet of ``ray.cluster_utils.Cluster``:
its own CPUs, logical memory, object store, custom resources and labels. The driver joins
the head, which is never removed and runs no dashboard (nothing needs it, and its fixed
port may be another cluster's on a shared machine). :meth:`Machines.remove` loses a whole machine at once
(its raylet and every actor on it, no goodbye), as a real machine dies.

:class:`MachineLoss` is a fault hook (rayagg/runtime/faults.py) that removes the machine
carrying the most nodes as the first call of a given round is submitted (at once, or
``delay_s`` later in a thread), so the round is under way when the machine goes, and
records when it went and which hosts and nodes were on it.
"""
from __future__ import annotations

import contextlib
import pathlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

import ray
import yaml
from ray._private import ray_constants
from ray.cluster_utils import Cluster

import psutil  # noqa: E402  (Ray ships psutil in ray/thirdparty_files and puts it on sys.path)

from rayagg.runtime.faults import FaultAt, FaultPoint

MB = 2**20
HEAD_TYPE = "ray.head.default"
# Notice a dead raylet in ~5 s rather than Ray's ~15 s; not less, or a loaded 2-core box
# misses a live raylet's health checks (tests/test_multinode.py).
SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}


def node_args(node_type: Mapping[str, Any]) -> dict[str, Any]:
    """``Cluster.add_node`` keyword arguments for one machine of ``node_type`` (a launcher
    node type: ``resources`` with CPU, GPU, memory, object_store_memory and custom ones,
    and ``labels``)."""
    resources = dict(node_type.get("resources", {}))
    args: dict[str, Any] = {"num_cpus": resources.pop("CPU", 0), "num_gpus": resources.pop("GPU", 0)}
    for key in ("memory", "object_store_memory"):
        if key in resources:
            args[key] = int(resources.pop(key))
    if resources:
        args["resources"] = resources
    if node_type.get("labels"):
        args["labels"] = dict(node_type["labels"])
    return args


def machine_types(definition: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(machine name, add_node arguments) for every worker machine of ``definition``, in
    the file's order: ``min_workers`` of each type, named ``TYPE-INDEX``."""
    machines = []
    for name, node_type in definition["available_node_types"].items():
        if name == definition.get("head_node_type", HEAD_TYPE):
            continue
        machines += [(f"{name}-{index}", node_args(node_type)) for index in range(node_type.get("min_workers", 0))]
    return machines


@dataclass
class Machines:
    """The running emulated cluster: machine name -> its Ray node, plus the Cluster."""

    cluster: Cluster
    nodes: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, float] = field(default_factory=dict)  # machine -> monotonic time it was removed

    def of(self, ray_node_id: str) -> Optional[str]:
        """The machine whose raylet has ``ray_node_id`` (None for the head)."""
        return next((name for name, node in self.nodes.items() if node.node_id == ray_node_id), None)

    def hosts_on(self, placement: Mapping[str, Any]) -> dict[str, list[str]]:
        """machine -> the run's hosts on it (``placement``: host -> HostReport)."""
        on: dict[str, list[str]] = {}
        for host, report in placement.items():
            machine = self.of(report.ray_node_id)
            if machine is not None:
                on.setdefault(machine, []).append(host)
        return on

    def remove(self, machine: str) -> float:
        """Kills ``machine``'s raylet and everything on it at once; returns when it began.

        Its worker processes (the run's host actors) are SIGKILLed first: they are the
        raylet's children, and ``Cluster.remove_node`` alone leaves them running for
        seconds, answering calls and sending heartbeats, which no real machine that dies
        does."""
        at = time.monotonic()
        self.removed[machine] = at
        node = self.nodes.pop(machine)
        for info in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []):
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(info.process.pid).children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
        self.cluster.remove_node(node, allow_graceful=False)
        return at


@contextlib.contextmanager
def emulated_cluster(definition: Mapping[str, Any] | pathlib.Path, *,
                     system_config: Optional[Mapping[str, Any]] = None) -> Iterator[Machines]:
    """Starts the head and every worker machine of ``definition`` (a mapping, or the path
    of a YAML file such as cluster/emulated-8.yaml), connects this process to it and
    yields the :class:`Machines`; on exit disconnects and stops every raylet it started."""
    if isinstance(definition, (str, pathlib.Path)):
        definition = yaml.safe_load(pathlib.Path(definition).read_text())
    head = node_args(definition["available_node_types"][definition.get("head_node_type", HEAD_TYPE)])
    cluster = Cluster(initialize_head=True, head_node_args={
        **head, "include_dashboard": False, "_system_config": dict(system_config or SYSTEM_CONFIG)})
    try:
        machines = Machines(cluster)
        for name, args in machine_types(definition):
            machines.nodes[name] = cluster.add_node(wait=False, **args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        yield machines
    finally:
        ray.shutdown()
        cluster.shutdown()


@dataclass
class Loss:
    """One machine lost: which, when (monotonic), and the hosts and nodes it carried."""

    machine: str
    at: float
    hosts: list[str]
    nodes: set[str]


def most_nodes(carried: Mapping[str, set[str]]) -> str:
    """The machine carrying the most of the run's nodes (first by name on a tie)."""
    return min(carried, key=lambda machine: (-len(carried[machine]), machine))


class MachineLoss:
    """A fault hook: as the first call of each round in ``rounds`` is submitted (its first
    attempt), picks a machine with ``choose`` (machine -> the nodes it carries now; by
    default the one carrying most) and removes it. With ``delay_s`` None at once, before the
    rest of the round is submitted: every host on it then has calls of the round pending,
    whatever the machine's speed, so a short round cannot finish first (tests). With a
    number, ``delay_s`` later in a thread while the round runs (long rounds: benchmarks).
    Set ``runner`` before the run starts. ``lost``: the :class:`Loss` of each machine
    removed, in order."""

    def __init__(self, machines: Machines, rounds: list[int], *, delay_s: Optional[float] = None,
                 choose: Callable[[Mapping[str, set[str]]], str] = most_nodes):
        self.machines, self.rounds, self.delay_s, self.choose = machines, list(rounds), delay_s, choose
        self.runner: Any = None
        self.lost: list[Loss] = []
        self._threads: list[threading.Thread] = []

    def fault(self, point: FaultPoint) -> None:
        if point.at != FaultAt.CALL_SUBMITTED or not self.rounds or self.runner.round_index != self.rounds[0]:
            return
        self.rounds.pop(0)
        pool = self.runner.hosts
        hosts = {machine: [h for h in on if h in pool.handles]
                 for machine, on in self.machines.hosts_on(self.runner.placement).items()}
        carried = {machine: {n for h in on for n in pool.carried[h]} for machine, on in hosts.items() if on}
        machine = self.choose(carried)
        if self.delay_s is None:
            self._remove(machine, hosts[machine], carried[machine])
            return
        thread = threading.Thread(target=self._remove, args=(machine, hosts[machine], carried[machine]),
                                  daemon=True)
        thread.start()
        self._threads.append(thread)

    def _remove(self, machine: str, hosts: list[str], nodes: set[str]) -> None:
        time.sleep(self.delay_s or 0.0)
        self.lost.append(Loss(machine, self.machines.remove(machine), hosts, nodes))

    def join(self, timeout_s: float = 60.0) -> None:
        """Waits for the removals started so far."""
        for thread in self._threads:
            thread.join(timeout_s)
