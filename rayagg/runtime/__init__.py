"""The Ray runtime: node actors, the runner that drives them, resource checks."""
from rayagg.runtime.runner import RayRunner, connect

__all__ = ["RayRunner", "connect"]
