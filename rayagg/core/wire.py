"""What crosses each link of the tree in a round, in bytes. Pure: no Ray, no torch.

A link joins a node and its parent; ``up`` is what the node sends its parent, ``down``
what the parent sends it. Two things cross links:

* the answers round steps hand to another node's step (:func:`step_bytes`): logits
  under FedAgg, model weights under HierFAVG. Each crossing counts once per step that
  takes it, as on a real network where every receiver gets its own copy;
* bridge samples (FedAgg only), when a node first receives a leaf's samples
  (:func:`bridge_bytes`): all of them in the first round of a run, then only those a
  re-parented, rebalanced or joined subtree brings its new ancestors. A leaf's samples
  reach an ancestor through each link on the way, so each of those links counts them.

The Ray runtime hands the samples from the driver's refs straight to each ancestor;
counting them link by link measures what the tree protocol moves, which is what a
method costs wherever its nodes run.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Optional, Sequence

if TYPE_CHECKING:  # schedule imports Link from here
    from rayagg.core.schedule import Step

# float32 values; a bridge sample's label is an int64.
FLOAT_BYTES, LABEL_BYTES = 4, 8


@dataclass(frozen=True)
class Link:
    """The bytes a node sent its parent (``up``) and received from it (``down``)."""

    up: int = 0
    down: int = 0

    def __add__(self, other: "Link") -> "Link":
        return Link(self.up + other.up, self.down + other.down)


def step_bytes(steps: Sequence["Step"], parent_of: Mapping[str, Optional[str]],
               answer_bytes: Callable[["Step"], int]) -> dict[str, Link]:
    """node -> the bytes the round's ``steps`` move over its link to its parent: each input
    a step takes from its node's child (up) or parent (down), sized by ``answer_bytes``
    of the step that produced it. Inputs from the node itself cross nothing."""
    up: Counter[str] = Counter()
    down: Counter[str] = Counter()
    for step in steps:
        for index in step.inputs:
            sender = steps[index].node
            if parent_of.get(sender) == step.node:
                up[sender] += answer_bytes(steps[index])
            elif parent_of.get(step.node) == sender:
                down[step.node] += answer_bytes(steps[index])
    return {node: Link(up[node], down[node]) for node in {*up, *down}}


def bridge_bytes(received: Mapping[str, Iterable[str]], parent_of: Mapping[str, Optional[str]],
                 bytes_of_leaf: Callable[[str], int]) -> dict[str, Link]:
    """node -> the bytes of bridge samples it sent its parent, given which leaves'
    samples each node ``received`` (node -> leaves). A leaf's samples that reach a node
    crossed the link just below it, from its child on the path to the leaf."""
    up: Counter[str] = Counter()
    for node, leaves in received.items():
        for leaf in leaves:
            sender = _child_towards(leaf, node, parent_of)
            if sender is not None:
                up[sender] += bytes_of_leaf(leaf)
    return {node: Link(up=count) for node, count in up.items()}


def merge(*parts: Mapping[str, Link]) -> dict[str, Link]:
    """The sum of several node -> Link maps."""
    total: dict[str, Link] = {}
    for part in parts:
        for node, link in part.items():
            total[node] = total.get(node, Link()) + link
    return total


def logits_bytes(samples: int, num_classes: int) -> int:
    """float32 logits of ``num_classes`` for each of ``samples``."""
    return FLOAT_BYTES * num_classes * samples


def bridge_sample_bytes(image_shape: Sequence[int]) -> int:
    """One bridge sample: a float32 code of 4 channels at a quarter of the image's side
    (rayagg/learning/autoencoder.py), and its label."""
    _, height, width = image_shape
    return FLOAT_BYTES * 4 * (height // 4) * (width // 4) + LABEL_BYTES


def _child_towards(leaf: str, ancestor: str, parent_of: Mapping[str, Optional[str]]) -> Optional[str]:
    """The child of ``ancestor`` whose subtree holds ``leaf`` (None if it holds none)."""
    node = leaf
    while node is not None and parent_of.get(node) != ancestor:
        node = parent_of.get(node)
    return node
