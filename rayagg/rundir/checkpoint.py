"""Node checkpoints: written atomically and durably, read back verified (``weights_only``)."""
from __future__ import annotations

import io
import pathlib
from typing import Optional

import torch

from rayagg.errors import CheckpointError
from rayagg.files import sha256_bytes, verified_bytes, write_atomic


def save(state: dict, path: pathlib.Path) -> str:
    """Writes ``state`` to ``path`` atomically and durably; returns the file's SHA-256."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    write_atomic(path, data)
    return sha256_bytes(data)


def load(path: pathlib.Path, sha256: Optional[str] = None) -> dict:
    """Reads a checkpoint (``weights_only``: no code runs); raises CheckpointError naming the
    file if it is missing, does not match ``sha256``, or is not a checkpoint."""
    data = verified_bytes(path, sha256, "checkpoint")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(f"checkpoint {path} is corrupt or not a rayagg checkpoint: {exc}") from exc
