"""The node actor: a thin Ray shell around one :class:`~rayagg.node.NodeState`.

Each method fetches its inputs, calls the pure code and returns the result. The
actor loads its own data from its machine's disk, so raw images never cross an actor
boundary; what does cross (bridge samples and logits) is recorded in a wire log the
tests read.
"""
from __future__ import annotations

import os
import pathlib
import threading
import time
from collections import Counter
from typing import Any, Optional

import numpy as np
import ray
import torch

from rayagg import checkpoint
from rayagg.node import BridgeSamples
from rayagg.plan import Plan, build_node, evaluation_split, load_data


def torch_threads(num_cpus: float) -> int:
    """Torch's intra-op threads for an actor granted ``num_cpus`` (at least one)."""
    return max(1, int(num_cpus))


@ray.remote
class NodeActor:
    """One tree node. Created by the driver only, so a parent's death never takes its
    children with it (actors made inside an actor die with their creator)."""

    def __init__(self, plan: Plan, name: str):
        self._name = name
        self._wire: Counter[tuple] = Counter()
        # A constructor that raises leaves the driver only "ActorDiedError", the cause
        # buried in the actor's log; kept here, ``ready`` raises it where the driver sees it.
        self._start_error: Optional[BaseException] = None
        try:
            self._build(plan)
        except Exception as exc:
            self._start_error = exc

    def _build(self, plan: Plan) -> None:
        resources = plan.tier(self._name).resources
        if resources.num_gpus == 0:
            # Ray leaves CUDA_VISIBLE_DEVICES unset for CPU-only actors, which would let
            # them see every GPU of the machine; hide them before CUDA initialises.
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        torch.set_num_threads(torch_threads(resources.num_cpus))
        use_cuda = resources.num_gpus > 0 and torch.cuda.is_available()
        self._device = torch.device("cuda" if use_cuda else "cpu")
        dataset = load_data(plan.config)
        self._state = build_node(plan, self._name, dataset, self._device)
        self._test = evaluation_split(plan, dataset)

    def start_heartbeats(self, supervisor: Any, interval_s: float) -> None:
        """Sends ``supervisor.heartbeat`` every ``interval_s`` from a daemon thread.

        A thread, because a training step holds this actor's only task slot for
        seconds; torch releases the GIL in its kernels, so the thread still runs.
        """
        # The first beat is synchronous: the supervisor then counts silence from now,
        # not from before this actor (maybe a restart) was created.
        ray.get(supervisor.heartbeat.remote(self._name), timeout=60)

        def beat() -> None:
            while True:  # a daemon thread: it ends with the actor's process
                time.sleep(interval_s)
                supervisor.heartbeat.remote(self._name)

        threading.Thread(target=beat, name=f"heartbeat-{self._name}", daemon=True).start()

    def ready(self) -> dict[str, Any]:
        """Where this actor runs and with what: for the runner's start-up check and tests.
        Raises the constructor's exception if building the node failed."""
        if self._start_error is not None:
            raise self._start_error
        context = ray.get_runtime_context()
        return {"node": self._name, "pid": os.getpid(), "ray_node_id": context.get_node_id(),
                "torch_threads": torch.get_num_threads(), "device": str(self._device),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def encode(self) -> BridgeSamples:
        """A leaf encodes its local data once, keeps its own bridge samples and returns them."""
        samples = self._state.encode()
        self._state.add_bridge_samples(samples)
        self._record("sent", "bridge_samples", samples.codes.shape, samples.labels.shape)
        return samples

    def add_bridge_samples(self, *samples: BridgeSamples) -> int:
        """Keeps the bridge samples of leaves below; returns how many samples it now holds."""
        for item in samples:
            self._record("received", "bridge_samples", item.codes.shape, item.labels.shape)
            self._state.add_bridge_samples(item)
        return self._state.bridge_sample_count

    def remove_bridge_samples(self, leaves: list[str]) -> int:
        for leaf in leaves:
            self._state.remove_bridge_samples(leaf)
        return self._state.bridge_sample_count

    def logits(self, leaves: list[str]) -> np.ndarray:
        out = self._state.logits(leaves).numpy()
        self._record("sent", "logits", out.shape)
        return out

    def learn(self, leaves: list[str], teacher: np.ndarray) -> float:
        self._record("received", "logits", teacher.shape)
        return self._state.learn(leaves, torch.from_numpy(np.array(teacher)))

    def evaluate(self) -> tuple[float, float, float]:
        """(test accuracy, test loss, seconds of training work since the last call)."""
        return (*self._state.evaluate(*self._test), self._state.take_work_s())

    def bridge_sample_count(self) -> int:
        return self._state.bridge_sample_count

    def save_checkpoint(self, path: str) -> str:
        """Writes this node's model, optimizer and shuffling state to ``path`` on the actor's
        machine; returns the file's SHA-256 (for the run's manifest)."""
        return checkpoint.save(self._state.state_dict(), pathlib.Path(path))

    def load_checkpoint(self, path: str, sha256: Optional[str] = None) -> str:
        """Restores model, optimizer and shuffling state from ``path`` (CheckpointError if
        it is missing, corrupt or not the file with ``sha256``)."""
        self._state.load_state_dict(checkpoint.load(pathlib.Path(path), sha256))
        return path

    def wire_log(self) -> list[dict[str, Any]]:
        """What crossed this actor's boundary: kind, direction, per-sample shapes, count."""
        return [{"direction": direction, "kind": kind, "sample_shapes": shapes, "count": count}
                for (direction, kind, shapes), count in self._wire.items()]

    def _record(self, direction: str, kind: str, *shapes: tuple[int, ...]) -> None:
        # Per-sample shapes (batch dimension dropped) keep the log bounded over many rounds.
        self._wire[(direction, kind, tuple(tuple(shape[1:]) for shape in shapes))] += 1
