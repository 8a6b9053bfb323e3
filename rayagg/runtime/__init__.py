"""The Ray runtime: host actors carrying tree nodes, the runner that drives them,
supervision and recovery, resource checks."""
from rayagg.runtime.cluster import connect
from rayagg.runtime.runner import RayRunner

__all__ = ["RayRunner", "connect"]
