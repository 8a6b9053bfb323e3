"""The frozen bridge autoencoder: pretraining, hash-checked weights, encode/decode.

Leaves encode their local samples into codes of shape 4 x H/4 x W/4; every node
decodes codes into pseudo-samples in [0, 1]. The pair is pretrained once on
public data, saved with a sha256 sidecar, and then identical (and frozen) on
every node: ``Autoencoder.digest`` lets nodes check that they agree.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import pathlib
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from rayagg.errors import CheckpointError, ConfigError
from rayagg.files import file_sha256, sha256_bytes, write_atomic

# Bump when the architecture or the file layout changes: old cache entries then miss.
FORMAT_VERSION = 1
CODE_CHANNELS = 4
_HIDDEN = 12  # 12 hidden channels put each half at ~2K parameters, as in the paper
_KEY_RE = re.compile(r"^[0-9A-Za-z_-]+$")


class Encoder(nn.Module):
    """Image float [0, 1] N x C x H x W -> code N x 4 x H/4 x W/4 (H, W divisible by 4)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, _HIDDEN, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(_HIDDEN, _HIDDEN, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(_HIDDEN, CODE_CHANNELS, 3, padding=1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the codes of ``images``."""
        return self.net(images)


class Decoder(nn.Module):
    """Code N x 4 x h x w -> image N x C x 4h x 4w in [0, 1] (final sigmoid)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        # Upsample + conv rather than ConvTranspose2d: no checkerboard artefacts,
        # and fewer parameters for the same receptive field.
        self.net = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(CODE_CHANNELS, _HIDDEN, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(_HIDDEN, _HIDDEN, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(_HIDDEN, in_channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the pseudo-samples decoded from ``codes``."""
        return self.net(codes)


@dataclass(frozen=True)
class Autoencoder:
    """The frozen pair (eval mode, ``requires_grad`` False) and its weights' sha256."""

    encoder: Encoder
    decoder: Decoder
    digest: str


def _check_images(images: torch.Tensor, in_channels: int) -> None:
    """Raise ConfigError unless ``images`` is float N x in_channels x H x W, N > 0, H, W % 4 == 0."""
    if not images.is_floating_point():
        raise ConfigError(f"autoencoder images must be float in [0, 1], got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != in_channels:
        raise ConfigError(
            f"autoencoder images must be N x {in_channels} x H x W, got {tuple(images.shape)}"
        )
    if images.shape[2] % 4 or images.shape[3] % 4:
        raise ConfigError(f"autoencoder image H and W must be divisible by 4, got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ConfigError("autoencoder pretraining needs at least one image")


def _train_epoch(model: nn.Module, images: torch.Tensor, opt: torch.optim.Optimizer,
                 batch_size: int, gen: torch.Generator) -> float:
    """Run one shuffled epoch of MSE reconstruction; return the sample-weighted mean loss."""
    order = torch.randperm(images.shape[0], generator=gen)
    total = 0.0
    for start in range(0, images.shape[0], batch_size):
        batch = images[order[start:start + batch_size].to(images.device)]
        loss = nn.functional.mse_loss(model(batch), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * batch.shape[0]
    return total / images.shape[0]


def pretrain(images: torch.Tensor, *, in_channels: int, epochs: int, batch_size: int = 128,
             lr: float = 1e-2, seed: int = 0) -> tuple[Encoder, Decoder, float]:
    """Pretrain a fresh pair on ``images`` (float [0, 1] N x C x H x W, public data).

    Trains with Adam on the MSE reconstruction loss, on ``images``' device.
    Seeded: the init runs under a forked RNG (the caller's global RNG is left
    untouched) and shuffling uses its own generator. Returns (encoder, decoder,
    mean train MSE of the last epoch), both modules in train mode, unfrozen.
    Raises ConfigError for a bad shape, ``epochs`` < 1 or ``batch_size`` < 1.
    """
    _check_images(images, in_channels)
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"pretrain needs epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder, decoder = Encoder(in_channels), Decoder(in_channels)
    model = nn.Sequential(encoder, decoder).to(images.device).train()
    images = images.float()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    mse = float("nan")
    for _ in range(epochs):
        mse = _train_epoch(model, images, opt, batch_size, gen)
    return encoder, decoder, mse


def _sidecar(path: pathlib.Path) -> pathlib.Path:
    """Return the path of the sha256 sidecar of weights file ``path``."""
    return path.with_suffix(".sha256")


def save(encoder: Encoder, decoder: Decoder, path: pathlib.Path, *, meta: dict) -> str:
    """Write the pair to ``path`` atomically plus a ``.sha256`` sidecar; return the digest.

    The file is a ``torch.save`` dict {"encoder", "decoder" (CPU state dicts),
    "in_channels", "meta"}; ``meta`` must hold only plain data (str, numbers,
    lists, dicts) so that ``weights_only`` loading accepts it. The sidecar holds
    the hex digest and a newline. Both files are written with
    :func:`rayagg.files.write_atomic` (unique temp file, fsync, rename, directory
    fsync): readers see the old file or the whole new one, and no temp file stays.
    """
    path = pathlib.Path(path)
    payload = {
        "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "decoder": {k: v.detach().cpu() for k, v in decoder.state_dict().items()},
        "in_channels": int(encoder.in_channels),
        "meta": dict(meta),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    digest = sha256_bytes(data)  # the digest of exactly the bytes the weights file gets
    # Sidecar first, weights last: after a crash in between, a sidecar
    # without weights is a cache miss, never unverifiable weights.
    write_atomic(_sidecar(path), (digest + "\n").encode())
    write_atomic(path, data)
    return digest


def _verify(path: pathlib.Path) -> str:
    """Return the sha256 of ``path`` after checking it against its sidecar.

    Raises CheckpointError naming the path if the file or sidecar is missing or
    the digests differ (the message gives expected and actual digests).
    """
    if not path.is_file():
        raise CheckpointError(f"autoencoder weights {path} do not exist")
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        raise CheckpointError(f"autoencoder weights {path}: sha256 sidecar {sidecar} is missing")
    tokens = sidecar.read_text().split()
    expected = tokens[0].lower() if tokens else "<empty>"
    actual = file_sha256(path)
    if expected != actual:
        raise CheckpointError(
            f"autoencoder weights {path} do not match their sidecar: "
            f"expected sha256 {expected}, actual {actual}"
        )
    return actual


def _freeze(module: nn.Module) -> nn.Module:
    """Return ``module`` in eval mode with every parameter's requires_grad off."""
    module.eval()
    module.requires_grad_(False)
    return module


def load(path: pathlib.Path) -> Autoencoder:
    """Return the frozen Autoencoder stored at ``path`` (on CPU).

    Raises CheckpointError naming ``path`` if the file or its sidecar is
    missing, the sha256 does not match, or the content is not a valid
    autoencoder checkpoint (chained from the underlying error).
    """
    path = pathlib.Path(path)
    digest = _verify(path)
    return _from_bytes(path.read_bytes(), str(path), digest)


def load_bytes(blob: bytes, digest: str) -> Autoencoder:
    """Return the frozen Autoencoder from a weights file's content shipped to another process.

    Raises CheckpointError if ``blob`` does not hash to ``digest`` or is not valid.
    """
    actual = hashlib.sha256(blob).hexdigest()
    if actual != digest:
        raise CheckpointError(f"autoencoder weights received with sha256 {actual}, expected {digest}")
    return _from_bytes(blob, "received blob", digest)


def _from_bytes(blob: bytes, source: str, digest: str) -> Autoencoder:
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt file
        raise CheckpointError(f"autoencoder weights {source} cannot be read: {exc}") from exc
    if not isinstance(state, dict) or not {"encoder", "decoder", "in_channels"} <= state.keys():
        raise CheckpointError(f"autoencoder weights {source} are not an autoencoder checkpoint")
    try:
        encoder, decoder = Encoder(int(state["in_channels"])), Decoder(int(state["in_channels"]))
        encoder.load_state_dict(state["encoder"])
        decoder.load_state_dict(state["decoder"])
    except Exception as exc:  # wrong shapes or keys: another architecture or format
        raise CheckpointError(f"autoencoder weights {source} do not fit the architecture: {exc}") from exc
    return Autoencoder(_freeze(encoder), _freeze(decoder), digest)

def cache_key(*, dataset: str, in_channels: int, image_size: int, public_samples: int,
              epochs: int, seed: int) -> str:
    """Return a short stable hex key (16 chars) for one pretraining configuration."""
    canonical = json.dumps(
        {"dataset": dataset, "in_channels": in_channels, "image_size": image_size,
         "public_samples": public_samples, "epochs": epochs, "seed": seed,
         "format": FORMAT_VERSION},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_or_pretrain(cache_dir: pathlib.Path, key: str, make_images: Callable[[], torch.Tensor], *,
                     in_channels: int, epochs: int, seed: int, meta: dict) -> Autoencoder:
    """Return the cached autoencoder for ``key``, pretraining and saving it on a miss.

    ``make_images`` is called only on a miss. An exclusive lock on
    ``cache_dir/autoencoder-{key}.lock`` makes concurrent processes wait for
    the one that trains instead of training twice. Raises ConfigError for a key
    that is not a plain file-name token, CheckpointError for a corrupt cache file
    (it is not silently retrained: a hash mismatch may be tampering).
    """
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ConfigError(f"autoencoder cache key must match {_KEY_RE.pattern}, got {key!r}")
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"autoencoder-{key}.pt"
    with open(cache_dir / f"autoencoder-{key}.lock", "a") as lock:
        # The lock serialises every load_or_pretrain of this key, across threads (each
        # open() is its own open file description) and processes: one trains and saves,
        # the others wait and load. Writers of the weights and sidecar therefore never
        # interleave here; write_atomic's unique temp names keep even direct concurrent
        # save() calls from writing into each other's temp file.
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if not path.exists():
                images = make_images()
                encoder, decoder, mse = pretrain(images, in_channels=in_channels,
                                                 epochs=epochs, seed=seed)
                save(encoder, decoder, path, meta={**meta, "key": key, "train_mse": mse})
            # Load back even right after saving: the round trip checks the file.
            return load(path)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _module_device(module: nn.Module) -> torch.device:
    """Return the device of ``module``'s first parameter."""
    return next(module.parameters()).device


def _batched(module: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Return ``module`` applied to ``inputs`` in chunks, float32, on the module's device.

    Runs under ``torch.no_grad()``, not ``inference_mode()``: the outputs are
    later training inputs, and inference tensors cannot be saved for backward.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = _module_device(module)
    with torch.no_grad():
        if inputs.shape[0] == 0:  # torch.cat needs at least one chunk
            return module(inputs.to(device, torch.float32))
        chunks = [module(inputs[i:i + batch_size].to(device, torch.float32))
                  for i in range(0, inputs.shape[0], batch_size)]
    return torch.cat(chunks).float()


def encode(encoder: Encoder, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Return the float32 codes of float [0, 1] ``images``, computed without autograd."""
    return _batched(encoder, images, batch_size)


def decode(decoder: Decoder, codes: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Return float32 pseudo-samples in [0, 1] decoded from ``codes``, without autograd."""
    return _batched(decoder, codes, batch_size)
