"""The Ray runtime: host actors carrying tree nodes, the runner that drives them,
supervision and recovery, resource checks. Import what you need from its modules
(``rayagg.runtime.runner.RayRunner``); importing this package imports no Ray."""
