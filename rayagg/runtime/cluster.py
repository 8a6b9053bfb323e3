"""Joining Ray, and what the cluster looks like: the runner's only contact with
``ray.init`` and ``ray.nodes``."""
from __future__ import annotations

import os
import socket
from typing import Callable, Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayagg.errors import ClusterError
from rayagg.runtime import ray_logs
from rayagg.runtime.resources import ClusterNode

# How long joining a cluster by address may take to reach the head before it is an error:
# ray.init itself retries an unreachable address for minutes.
CONNECT_TIMEOUT_S = 10.0


def connect(address: Optional[str], *, verbose: bool = False,
            notify: Callable[[str], None] = ray_logs.to_stderr) -> bool:
    """Starts a local Ray (address None) or joins ``address``; returns True if we started it.

    Quiet unless ``verbose`` (see ray_logs.py): worker output is not forwarded here, Ray's
    token-auth notice is dropped, and raylet notices go through ``notify`` in rayagg's words
    (and to RUN_DIR/ray-notices.log once :func:`ray_logs.keep_logs` names it). ``verbose``
    prints everything as Ray does. Ray's driver-side warnings and errors show either way.

    Ray 2.60 enables token auth by default; a client joining by address needs
    RAY_AUTH_MODE=token in its environment before ``import ray``: the CLI sets it
    before it imports this module. Joins an already initialised Ray session as is.
    Raises ClusterError naming the address when nothing answers there within
    CONNECT_TIMEOUT_S or Ray refuses to join.
    """
    if ray.is_initialized():
        return False
    # Before ray.init: the token-auth notice is logged from inside it.
    ray_logs.quiet(not verbose, notify)
    options = ray_logs.init_options(verbose)
    if address is None:
        # "local" starts a new Ray even where another one runs on this machine.
        ray.init(address="local", include_dashboard=False, **options)
        return True
    _probe(address)
    try:
        ray.init(address=address, **options)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError, ... from ray.init
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {exc}") from exc
    return False


def _probe(address: str) -> None:
    """Fails fast when nothing listens at ``address`` (host:port, or ray://host:port);
    'auto' is left to ray.init, which fails at once when it finds no cluster."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as connection:
            if os.environ.get("RAY_USE_TLS", "0") in ("", "0"):
                _expect_grpc(connection, address)
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r} within "
                           f"{CONNECT_TIMEOUT_S:g} s: {exc} (is `ray start --head` running there, "
                           "and is the port open to this machine?)") from exc


# An HTTP/2 client's first bytes: the connection preface and an empty SETTINGS frame.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS_FRAME = 4


def _expect_grpc(connection: socket.socket, address: str) -> None:
    """Ray's GCS and client server are gRPC servers: greeted as an HTTP/2 client, they
    answer with a SETTINGS frame (frame type at byte 3). Anything else (a web server's
    page, silence) is not Ray, and ray.init would retry it for many minutes: ClusterError
    naming what answered. (Not tried with RAY_USE_TLS: the greeting would need TLS.)"""
    try:
        connection.sendall(_HTTP2_HELLO)
        reply = connection.recv(9)
    except socket.timeout:
        reply = None
    except ConnectionError:
        reply = b""
    if reply and len(reply) >= 4 and reply[3] == _SETTINGS_FRAME:
        return
    answered = (f"no answer within {CONNECT_TIMEOUT_S:g} s" if reply is None else
                "it closed the connection" if not reply else f"it answered {reply!r}")
    raise ClusterError(f"something listens at {address!r} but it is not a Ray cluster: greeted as "
                       f"gRPC over HTTP/2, as Ray's head is, {answered}; check the port (the head's "
                       "GCS port, 6379 by default, or ray://HOST:10001)")


def cluster_nodes() -> list[ClusterNode]:
    """The alive Ray nodes with their total resources and labels."""
    return [ClusterNode(node["NodeManagerAddress"], node["Resources"], node.get("Labels", {}))
            for node in ray.nodes() if node["Alive"]]


def on_driver_node() -> NodeAffinitySchedulingStrategy:
    """Places an actor on the Ray node that runs this driver. The supervisor goes there:
    it then dies only with the driver, which the run cannot survive anyway, instead of
    with whichever worker machine Ray picked (a removed edge machine once took it along)."""
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
