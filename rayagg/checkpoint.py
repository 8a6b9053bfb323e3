"""Node checkpoints: written atomically, read back safely (``weights_only``)."""
from __future__ import annotations

import os
import pathlib

import torch

from rayagg.errors import CheckpointError


def save(state: dict, path: pathlib.Path) -> None:
    """Writes ``state`` to ``path`` via a temporary file, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: pathlib.Path) -> dict:
    """Reads a checkpoint; raises CheckpointError naming the file if it is missing or corrupt."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(f"checkpoint {path} is corrupt or not a rayagg checkpoint: {exc}") from exc
