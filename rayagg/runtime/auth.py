"""Ray's token authentication, handled in one place. Importing this imports no Ray.

Ray 2.60 turns token auth on for every cluster it starts; a client that joins one by
address (``ray.init(address=...)``, ``JobSubmissionClient(url)``) fails with
"Missing authentication token" unless ``RAY_AUTH_MODE=token`` is in its environment
*before* ``import ray`` (setting it after the import has no effect). The token itself
comes from ``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``, which Ray reads on its own.
Every rayagg command that joins a cluster by address calls :func:`join_by_address`
before anything imports Ray; a local run (no address) leaves the environment alone.
"""
from __future__ import annotations

import os

AUTH_MODE_ENV = "RAY_AUTH_MODE"


def join_by_address() -> None:
    """Prepares this process to join a Ray cluster by address: ``RAY_AUTH_MODE=token``
    unless the user chose a mode. A process that imported Ray already keeps the mode it
    imported with (a test session, a notebook that joined the cluster itself)."""
    os.environ.setdefault(AUTH_MODE_ENV, "token")
