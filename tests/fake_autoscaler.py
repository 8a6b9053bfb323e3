"""A fake autoscaling Ray cluster on one machine, for tests.

Ray's fake node provider (``ray/autoscaler/_private/fake_multi_node``) lets the real
autoscaler "launch a machine" by starting another raylet on this machine, and "terminate"
it by killing that raylet. ``ray.cluster_utils.AutoscalingCluster`` drives it but is
broken in the 2.60 wheel: it reads ``fake_multi_node/example.yaml``, which the wheel does
not ship; it passes custom head resources wrapped in literal quotes (invalid JSON); it
always binds port 6379; and ``start()``/``shutdown()`` run ``ray stop --force``, which
kills every Ray process of the user, other sessions' tests included.

``fake_autoscaling_cluster`` fixes all four: the config is written inline, resources go
as plain JSON, the head gets free ports and its own temp dir, and it stops exactly the
processes it started (its own process session, plus anything naming its temp dir),
never with ``ray stop``. Each fake node is a raylet plus its dashboard and runtime-env
agents: ~130 MB.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Iterator, Mapping, Optional

import ray
from ray.cluster_utils import AutoscalingCluster

import psutil  # noqa: E402  (Ray ships psutil in ray/thirdparty_files and puts it on sys.path)

MB = 2**20
HEAD_TYPE = "ray.head.default"  # the fake provider's fixed name for the head's node type
WORKER_TYPE_KEYS = {"resources", "min_workers", "max_workers", "labels"}


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, *, poll_s: float = 0.2) -> Any:
    """Polls ``predicate`` until it returns something truthy and returns that; raises
    AssertionError naming ``what`` if ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def alive_worker_count(resource: str) -> int:
    """The number of alive Ray nodes whose total resources include ``resource``
    (needs ``ray.init`` to the cluster)."""
    return sum(1 for node in ray.nodes() if node["Alive"] and resource in node["Resources"])


@contextlib.contextmanager
def fake_autoscaling_cluster(worker_types: Mapping[str, Mapping[str, Any]], *, head_cpus: float = 1,
                             head_resources: Optional[Mapping[str, float]] = None,
                             idle_timeout_s: float = 6, temp_dir: Optional[str] = None,
                             object_store_mb: int = 100, startup_timeout_s: float = 60,
                             system_config: Optional[Mapping[str, Any]] = None) -> Iterator[str]:
    """Starts a head plus a fake autoscaler that launches worker Ray nodes (processes on this
    machine) of ``worker_types`` on demand and removes idle ones; yields the GCS address to
    ``ray.init(address=...)``. Stops everything it started on exit (by pid / process
    session, never ``ray stop``), also when the body raises.

    ``worker_types`` maps a node type name to ``{"resources": {"CPU": 1, "device": 4},
    "min_workers": 0, "max_workers": 3}`` plus optional ``"labels": {"tier": "device"}``
    (Ray node labels, set on the launched nodes). Resource amounts must be whole numbers
    (the autoscaler's schema). A node is removed ``idle_timeout_s`` after its last task or
    actor ended. ``object_store_mb`` sizes every node's object store unless a type sets
    ``object_store_memory`` (bytes) itself. A driver still connected to this cluster on
    exit is disconnected (``ray.shutdown()``) first, since it would outlive its GCS.

    Raises ValueError for a malformed ``worker_types``, and RuntimeError (with the tail of
    the head's output) if the head does not come up within ``startup_timeout_s`` or exits
    during start-up twice.
    """
    cluster = FakeAutoscalingCluster(worker_types, head_cpus=head_cpus, head_resources=head_resources,
                                     idle_timeout_s=idle_timeout_s, object_store_mb=object_store_mb)
    failed = True
    try:
        address = cluster.start(temp_dir=temp_dir, startup_timeout_s=startup_timeout_s,
                                system_config=system_config)
        yield address
        failed = False
    finally:
        cluster.shutdown(keep_temp_dir=failed)


class FakeAutoscalingCluster(AutoscalingCluster):
    """``AutoscalingCluster`` with an inline config, valid JSON, free ports, its own temp dir
    and no ``ray stop``. Use it through ``fake_autoscaling_cluster``."""

    def __init__(self, worker_types: Mapping[str, Mapping[str, Any]], *, head_cpus: float,
                 head_resources: Optional[Mapping[str, float]], idle_timeout_s: float,
                 object_store_mb: int):
        if head_cpus < 0 or head_cpus != int(head_cpus):
            raise ValueError(f"head_cpus must be a whole number >= 0 (ray start takes whole CPUs), got {head_cpus}")
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        self._head_cpus = int(head_cpus)
        self._custom_head = dict(head_resources or {})
        if {"CPU", "GPU"} & set(self._custom_head):
            raise ValueError("pass the head's CPUs as head_cpus; head_resources are custom resources only")
        self._object_store_bytes = object_store_mb * MB
        self._idle_timeout_s = idle_timeout_s
        self._worker_types = {name: _worker_type(name, spec, self._object_store_bytes)
                              for name, spec in worker_types.items()}
        self._leader: Optional[subprocess.Popen] = None
        self._temp_dir: Optional[str] = None
        self._own_temp_dir = False
        self.address: Optional[str] = None
        # the parent keeps the config in self._config; it is only final once the port is known
        super().__init__({"CPU": self._head_cpus, **self._custom_head}, self._worker_types)

    # ---- config ------------------------------------------------------------------------

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        """What ``fake_multi_node/example.yaml`` held, inline; the provider learns the GCS
        address in ``start`` (the parent's provider assumes port 6379)."""
        if autoscaler_v2 or config_kwargs:
            raise ValueError("autoscaler v2 and extra config keys are not supported here")
        node_types = {name: dict(spec) for name, spec in worker_node_types.items()}
        node_types[HEAD_TYPE] = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
        return {
            "cluster_name": "fake_multinode",
            "max_workers": sum(spec["max_workers"] for spec in worker_node_types.values()),
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": node_types,
            "head_node_type": HEAD_TYPE,
            "auth": {}, "upscaling_speed": 1.0,
            "idle_timeout_minutes": self._idle_timeout_s / 60,
            "docker": {}, "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        }

    # ---- start -------------------------------------------------------------------------

    def start(self, temp_dir: Optional[str] = None, startup_timeout_s: float = 60,
              system_config: Optional[Mapping[str, Any]] = None, attempts: int = 2) -> str:
        """Starts the head (``ray start --head --block`` in a new process session, whose
        monitor runs the autoscaler) and returns the GCS address once it is up. A head that
        exits during start-up is started again, up to ``attempts`` times: on a loaded
        machine Ray's raylet gives up when its agent processes start slowly."""
        if temp_dir is None:
            # short: Ray's Unix socket paths under it must stay below 108 characters
            temp_dir, self._own_temp_dir = tempfile.mkdtemp(prefix="rfa-", dir="/tmp"), True
        os.makedirs(temp_dir, exist_ok=True)
        self._temp_dir = os.path.abspath(temp_dir)
        for _ in range(attempts):
            exit_code = self._launch_head(startup_timeout_s, system_config)
            if exit_code is None:
                ray._private.services.find_gcs_addresses.cache_clear()
                return self.address
            output = self._head_output()
            self._stop_processes(grace_s=2.0)  # what the failed head left behind
        raise RuntimeError(f"`ray start --head` exited with {exit_code} ({attempts} attempts); "
                           f"its output ends:\n{output}")

    def _launch_head(self, startup_timeout_s: float, system_config: Optional[Mapping[str, Any]]) -> Optional[int]:
        """Starts the head on a fresh port; returns None once it is up, or the exit code of
        a head that exited first. Raises RuntimeError if neither happens in time."""
        address_file = os.path.join(self._temp_dir, "ray_current_cluster")
        with contextlib.suppress(FileNotFoundError):
            os.remove(address_file)  # a stale one would look like a started head
        port = _free_port()
        self.address = f"{ray._private.services.get_node_ip_address()}:{port}"
        self._config["provider"]["gcs_address"] = self.address
        config_path = os.path.join(self._temp_dir, "autoscaling.json")
        with open(config_path, "w") as f:
            json.dump(self._config, f)
        with open(os.path.join(self._temp_dir, "head.out"), "wb") as log:
            self._leader = subprocess.Popen(
                self._start_command(port, config_path, system_config), env=self._head_env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: os.path.exists(address_file) or self._leader.poll() is not None,
                     startup_timeout_s, f"the fake cluster's head at {self.address}")
        except AssertionError as exc:
            raise RuntimeError(f"{exc}; its output ends:\n{self._head_output()}") from exc
        return self._leader.poll()

    def _start_command(self, port: int, config_path: str, system_config: Optional[Mapping[str, Any]]) -> list[str]:
        command = [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--head",
                   "--block", f"--port={port}", f"--temp-dir={self._temp_dir}",
                   f"--autoscaling-config={config_path}", f"--num-cpus={self._head_cpus}", "--num-gpus=0",
                   f"--object-store-memory={self._object_store_bytes}", "--include-dashboard=false",
                   "--disable-usage-stats",
                   # every port a head binds by default is fixed; two clusters must not collide
                   f"--ray-client-server-port={_free_port()}",
                   f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-port={_free_port()}"]
        if self._custom_head:
            command.append(f"--resources={json.dumps(self._custom_head)}")  # an argv item: no shell quotes
        if system_config:
            command.append(f"--system-config={json.dumps(system_config, separators=(',', ':'))}")
        return command

    @staticmethod
    def _head_env() -> dict[str, str]:
        """The head (and the nodes its autoscaler starts) use this driver's auth mode, so
        that ``ray.init(address=...)`` from this process can connect."""
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               "RAY_AUTH_MODE": "token" if _driver_uses_token() else "disabled"}
        env.pop("RAY_ADDRESS", None)
        return env

    def _head_output(self, chars: int = 4000) -> str:
        try:
            with open(os.path.join(self._temp_dir, "head.out"), "rb") as f:
                return f.read().decode(errors="replace")[-chars:]
        except OSError as exc:
            return f"(unreadable: {exc})"

    # ---- stop --------------------------------------------------------------------------

    def shutdown(self, keep_temp_dir: bool = False, grace_s: float = 5.0) -> None:
        """Disconnects a driver connected to this cluster, then stops the head and every
        fake node: SIGTERM, ``grace_s``, SIGKILL. Raises RuntimeError if a process
        survives SIGKILL. Removes the temp dir it created unless ``keep_temp_dir``."""
        if self._leader is None:
            return
        if ray.is_initialized() and _connected_to(self.address):
            ray.shutdown()
        survivors = self._stop_processes(grace_s)
        ray._private.services.find_gcs_addresses.cache_clear()
        if survivors:
            raise RuntimeError(f"fake cluster processes survived SIGKILL: {[p.pid for p in survivors]}")
        if self._own_temp_dir and not keep_temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
        elif keep_temp_dir:
            warnings.warn(f"fake cluster logs kept in {self._temp_dir}", stacklevel=2)
        self._leader = None

    def _stop_processes(self, grace_s: float) -> list[psutil.Process]:
        """SIGTERM to every process of this cluster, SIGKILL to those left after
        ``grace_s`` (twice: a raylet may spawn a worker meanwhile); returns survivors."""
        survivors: list[psutil.Process] = []
        for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
            survivors = self._processes()
            if not survivors:
                break
            for process in survivors:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(sig)
            _, survivors = psutil.wait_procs(survivors, timeout=grace_s if sig == signal.SIGTERM else 2.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._leader.wait(timeout=2.0)  # reap our child
        return survivors

    def _processes(self) -> list[psutil.Process]:
        """Live processes of this cluster: those in the head's process session (the head's
        and, through its autoscaler, the fake nodes'), those naming its temp dir, and all
        their descendants. Never this process."""
        found: dict[int, psutil.Process] = {}
        for process in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                if process.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                ours = os.getsid(process.pid) == self._leader.pid or any(
                    self._temp_dir in part for part in process.info["cmdline"] or ())
                if ours:
                    found[process.pid] = process
                    for child in process.children(recursive=True):
                        found[child.pid] = child
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        found.pop(os.getpid(), None)
        return [p for p in found.values() if _alive(p)]


# ---- helpers -------------------------------------------------------------------------------

def _worker_type(name: str, spec: Mapping[str, Any], object_store_bytes: int) -> dict[str, Any]:
    """A node type of the autoscaler's config from the short form; raises ValueError."""
    unknown = set(spec) - WORKER_TYPE_KEYS
    if unknown or "resources" not in spec or "max_workers" not in spec:
        raise ValueError(f"worker type {name!r}: needs resources and max_workers, may have "
                         f"{sorted(WORKER_TYPE_KEYS)}; got {sorted(spec)}")
    if name == HEAD_TYPE:
        raise ValueError(f"{HEAD_TYPE!r} is the head's type name")
    resources = {"object_store_memory": object_store_bytes, **spec["resources"]}
    for key, amount in resources.items():
        if amount < 0 or amount != int(amount):
            raise ValueError(f"worker type {name!r}: resource {key!r} must be a whole number >= 0 "
                             f"(the autoscaler's schema), got {amount}")
    node_type = {"resources": {key: int(amount) for key, amount in resources.items()}, "node_config": {},
                 "min_workers": int(spec.get("min_workers", 0)), "max_workers": int(spec["max_workers"])}
    if not 0 <= node_type["min_workers"] <= node_type["max_workers"]:
        raise ValueError(f"worker type {name!r}: need 0 <= min_workers <= max_workers")
    if spec.get("labels"):
        node_type["labels"] = {str(key): str(value) for key, value in spec["labels"].items()}
    return node_type


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _driver_uses_token() -> bool:
    """Whether this process's Ray client sends a token (fixed when ``ray`` is imported, or
    when a local ``ray.init()`` turned token auth on)."""
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode
        return get_authentication_mode() == AuthenticationMode.TOKEN
    except ImportError:
        return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def _connected_to(address: Optional[str]) -> bool:
    try:
        return ray.get_runtime_context().gcs_address == address
    except Exception:  # noqa: BLE001 - unknown: leave a driver that may belong elsewhere alone
        return False


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
