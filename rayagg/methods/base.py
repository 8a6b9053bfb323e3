"""What every training method offers the runtimes, and the sizes of what its steps send."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Mapping, Sequence

from rayagg.config import MethodConfig
from rayagg.core.schedule import LOGITS, SHARE, Step, closing_steps
from rayagg.core.tree import Tree
from rayagg.core.wire import logits_bytes
from rayagg.nodes import tier_of


class Method:
    """A training method on the tree: the steps of one round.

    ``carries_bridge_samples``: the leaves encode their data once and every ancestor holds
    the codes (FedAgg); other methods leave the encoder unused and move no sample.
    ``shares_weights``: steps hand model weights to other nodes, so the runtimes size them
    for the wire count (rayagg/core/wire.py).
    """

    name: ClassVar[str]
    carries_bridge_samples: ClassVar[bool] = False
    shares_weights: ClassVar[bool] = False

    def __init__(self, config: MethodConfig):
        self.config = config

    def round_steps(self, tree: Tree, leaves_of, dead: Iterable[str], live: Sequence[str],
                    save: bool) -> list[Step]:
        """The round's steps in submission order, ending with :meth:`finish`'s.
        ``leaves_of(node)``: the leaves whose bridge samples ``node`` holds; ``live``: the
        nodes that run (in tree order); with ``save`` every live node checkpoints."""
        raise NotImplementedError

    def scored(self, tree: Tree, node: str) -> bool:
        """Whether ``node`` is evaluated each round (every node, unless a method says not)."""
        return True

    def finish(self, steps: list[Step], tree: Tree, live: Sequence[str], save: bool) -> list[Step]:
        """``steps`` and then each live node's evaluation (if scored) and, with ``save``, its
        checkpoint (``schedule.closing_steps``)."""
        return steps + closing_steps(live, save, lambda node: self.scored(tree, node))


@dataclass(frozen=True)
class Payloads:
    """The bytes of each step's answer when another node takes it: logits for each bridge
    sample of the step's leaves, or a model's weights (per tier, for the methods that
    share them)."""

    num_classes: int
    samples_of_leaf: Mapping[str, int]
    weights_of_tier: Mapping[str, int] = field(default_factory=dict)

    def answer_bytes(self, step: Step) -> int:
        if step.call == LOGITS:
            return logits_bytes(sum(self.samples_of_leaf[leaf] for leaf in step.leaves), self.num_classes)
        if step.call == SHARE:
            return self.weights_of_tier[tier_of(step.node)]
        return 0
