"""Training methods: what a round's steps are on the tree. Pure: no Ray, no torch.

A method lists the steps of a round (rayagg/core/schedule.py); what a node does in each
step is the node's method of the same name (rayagg/learning/node.py), which both
runtimes call. ``method_for(config.method)`` picks one; docs/methods.md compares them.
"""
from __future__ import annotations

from rayagg.config import MethodConfig
from rayagg.methods.base import Method, Payloads
from rayagg.methods.fedagg import FedAgg
from rayagg.methods.hierfavg import HierFAVG
from rayagg.methods.local import LocalOnly

_BY_NAME: dict[str, type[Method]] = {cls.name: cls for cls in (FedAgg, HierFAVG, LocalOnly)}


def method_for(config: MethodConfig) -> Method:
    """The method ``config`` names (its name is validated by the config)."""
    return _BY_NAME[config.name](config)


__all__ = ["FedAgg", "HierFAVG", "LocalOnly", "Method", "Payloads", "method_for"]
