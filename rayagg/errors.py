"""The project's own errors: one base class, a few subclasses naming the cause.

Ray's and torch's exceptions are converted at the boundary (``raise ... from exc``)
so a user sees which node, which field or which file is at fault.
"""
from __future__ import annotations


class RayaggError(Exception):
    """Base class of every error rayagg raises on purpose."""


class ConfigError(RayaggError):
    """A configuration value is malformed or impossible; the message names the field."""


class DataError(RayaggError):
    """A data set is missing or unusable; the message lists the paths tried."""


class CheckpointError(RayaggError):
    """A checkpoint or weights file is missing, corrupt or does not match its hash."""


class ResourceError(RayaggError):
    """A tier asks for resources that no node of the cluster can ever provide."""


class NodeError(RayaggError):
    """A tree node (an actor) failed; ``node`` is its name, e.g. ``edge-2``."""

    def __init__(self, node: str, message: str):
        super().__init__(f"{node}: {message}")
        self.node = node
        self.detail = message

    def __reduce__(self):  # Ray pickles errors raised in actors: rebuild with both arguments
        return type(self), (self.node, self.detail)


class NodeTimeoutError(NodeError):
    """A call to a node did not finish within its timeout."""


class NodeDiedError(NodeError):
    """A node's actor died (killed, crashed, or its machine went away)."""


class NodeStoppedError(NodeError):
    """A node left its host actor (``NodeHost.stop_node``): calls to it fail as if its
    process had died, while the other nodes on that host carry on."""


class RecoveryError(RayaggError):
    """A failure the tree cannot absorb: no survivor in a tier, restarts exhausted, or a
    round that failed again after its retry."""


class RunDirError(RayaggError):
    """A run directory cannot be used: it holds another run, is not a run, or is a file."""


class ScaleError(RayaggError):
    """A scale request cannot be delivered or was refused: the run is not live or has
    finished, its leaf tier is not elastic, or the count is outside its range."""


class ClusterError(RayaggError):
    """The Ray cluster cannot be reached or joined; the message names the address."""


class TrainingError(RayaggError):
    """A node's training diverged: a loss stopped being finite. The message names the
    node, the loss and the batch; one argument, so the error pickles (Ray ships it from
    an actor to the driver)."""


class JobError(RayaggError):
    """A Ray Job cannot be submitted, found or stopped: the job server does not answer,
    the job id is unknown, or the run directory given cannot mean the same on the cluster."""
