"""Tests of rayagg.learning.autoencoder: shapes, pretraining, hash-checked save/load, cache, no-grad decode."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from rayagg.learning import autoencoder as ae
from rayagg.errors import CheckpointError, ConfigError
from rayagg.files import file_sha256
from rayagg.learning.models import build_model, count_parameters

SHAPES = [(1, 28), (3, 32)]


def smooth_images(n: int, channels: int = 1, size: int = 28, seed: int = 0) -> torch.Tensor:
    """Return n random smooth images in [0, 1]: coarse noise upsampled bilinearly."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, size // 4, size // 4, generator=gen)
    return nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def reconstruction_mse(encoder: nn.Module, decoder: nn.Module, images: torch.Tensor) -> float:
    """Return the MSE of decode(encode(images)) against images."""
    return nn.functional.mse_loss(ae.decode(decoder, ae.encode(encoder, images)), images).item()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return smooth_images(256)


@pytest.fixture(scope="module")
def trained(images):
    """A pair pretrained for 3 epochs on the shared synthetic images: (encoder, decoder, mse)."""
    return ae.pretrain(images, in_channels=1, epochs=3, batch_size=32, seed=0)


@pytest.fixture
def saved(tmp_path, trained):
    """The trained pair saved under tmp_path: (path, digest)."""
    path = tmp_path / "ae.pt"
    digest = ae.save(trained[0], trained[1], path, meta={"dataset": "synthetic", "mse": trained[2]})
    return path, digest


@pytest.mark.parametrize("channels,size", SHAPES)
def test_shapes_range_and_sizes(channels, size):
    encoder, decoder = ae.Encoder(channels), ae.Decoder(channels)
    codes = ae.encode(encoder, torch.rand(5, channels, size, size), batch_size=2)
    assert codes.shape == (5, 4, size // 4, size // 4) and codes.dtype == torch.float32
    out = ae.decode(decoder, codes * 100, batch_size=2)  # large codes: sigmoid still bounds
    assert out.shape == (5, channels, size, size)
    assert out.min() >= 0 and out.max() <= 1
    assert count_parameters(encoder) < 5000 and count_parameters(decoder) < 5000


def test_empty_batch():
    codes = ae.encode(ae.Encoder(3), torch.rand(0, 3, 32, 32))
    assert codes.shape == (0, 4, 8, 8)


def test_pretrain_lowers_mse(images, trained):
    encoder, decoder, mse = trained
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = reconstruction_mse(ae.Encoder(1), ae.Decoder(1), images)
    after = reconstruction_mse(encoder, decoder, images)
    assert after < 0.5 * untrained
    assert 0 < mse < untrained


def test_pretrain_is_seeded_and_leaves_global_rng_alone():
    small = smooth_images(32)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = ae.pretrain(small, in_channels=1, epochs=1, batch_size=8, seed=5)
    assert torch.equal(torch.rand(1), before)
    b = ae.pretrain(small, in_channels=1, epochs=1, batch_size=8, seed=5)
    assert a[2] == b[2]
    for p, q in zip(a[0].parameters(), b[0].parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kwargs", [
    {"in_channels": 3, "epochs": 1},  # channel mismatch
    {"in_channels": 1, "epochs": 0},
])
def test_pretrain_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        ae.pretrain(smooth_images(4), **kwargs)


def test_pretrain_rejects_bad_images():
    with pytest.raises(ConfigError, match="divisible by 4"):
        ae.pretrain(torch.rand(4, 1, 30, 30), in_channels=1, epochs=1)
    with pytest.raises(ConfigError, match="float"):
        ae.pretrain(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), in_channels=1, epochs=1)


def test_save_load_round_trip(saved, trained, images):
    path, digest = saved
    assert path.with_suffix(".sha256").read_text() == digest + "\n"
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = ae.load(path)
    assert loaded.digest == digest
    for module in (loaded.encoder, loaded.decoder):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    batch = images[:16]
    assert torch.equal(ae.encode(loaded.encoder, batch), ae.encode(trained[0], batch))
    codes = ae.encode(loaded.encoder, batch)
    assert torch.equal(ae.decode(loaded.decoder, codes), ae.decode(trained[1], codes))
    assert not list(path.parent.glob("*.tmp"))  # atomic writes leave no temp files


def test_saved_files_are_ordinary_files_under_the_umask(tmp_path, trained):
    old = os.umask(0o022)
    try:
        ae.save(trained[0], trained[1], tmp_path / "ae.pt", meta={})
    finally:
        os.umask(old)
    for name in ("ae.pt", "ae.sha256"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def test_crash_before_weights_is_a_cache_miss(tmp_path, trained, monkeypatch):
    """Sidecar first, weights last: a crash in between leaves no weights (a miss that
    load_or_pretrain retrains), never weights without a matching sidecar."""
    real_write = ae.write_atomic
    written = []

    def crash_on_weights(path, data):
        written.append(path.name)
        if path.suffix == ".pt":
            raise OSError("killed")
        real_write(path, data)

    monkeypatch.setattr(ae, "write_atomic", crash_on_weights)
    path = tmp_path / "autoencoder-k3.pt"
    with pytest.raises(OSError, match="killed"):
        ae.save(trained[0], trained[1], path, meta={})
    assert written == ["autoencoder-k3.sha256", "autoencoder-k3.pt"]
    assert not path.exists() and not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    loaded = ae.load_or_pretrain(tmp_path, "k3", lambda: smooth_images(32), in_channels=1,
                                 epochs=1, seed=0, meta={})
    assert loaded.digest == path.with_suffix(".sha256").read_text().strip()


def test_tampered_file_raises(saved):
    path, digest = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=digest) as info:
        ae.load(path)
    assert str(path) in str(info.value)


def test_missing_sidecar_raises(saved):
    path, _ = saved
    path.with_suffix(".sha256").unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        ae.load(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(CheckpointError, match="do not exist"):
        ae.load(tmp_path / "nope.pt")


def test_garbage_with_matching_sidecar_raises(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a torch checkpoint")
    path.with_suffix(".sha256").write_text(file_sha256(path) + "\n")
    with pytest.raises(CheckpointError, match="cannot be read") as info:
        ae.load(path)
    assert info.value.__cause__ is not None


def test_wrong_content_with_matching_sidecar_raises(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    path.with_suffix(".sha256").write_text(file_sha256(path) + "\n")
    with pytest.raises(CheckpointError, match="not an autoencoder"):
        ae.load(path)


def test_cache_key_is_stable_and_sensitive():
    base = dict(dataset="cifar10", in_channels=3, image_size=32, public_samples=1000, epochs=5, seed=0)
    key = ae.cache_key(**base)
    assert key == ae.cache_key(**dict(reversed(list(base.items()))))
    assert len(key) == 16 and int(key, 16) >= 0
    assert key != ae.cache_key(**{**base, "seed": 1})


def test_load_or_pretrain_trains_once(tmp_path):
    calls = []

    def make_images():
        calls.append(1)
        return smooth_images(32)

    kwargs = dict(in_channels=1, epochs=1, seed=0, meta={"dataset": "synthetic"})
    first = ae.load_or_pretrain(tmp_path, "k1", make_images, **kwargs)
    second = ae.load_or_pretrain(tmp_path, "k1", make_images, **kwargs)
    assert len(calls) == 1
    assert first.digest == second.digest
    assert (tmp_path / "autoencoder-k1.pt").is_file()
    assert (tmp_path / "autoencoder-k1.sha256").is_file()


def test_load_or_pretrain_concurrent_callers_train_once(tmp_path):
    """The flock serialises callers: the second waits and then hits the cache."""
    calls = []

    def make_images():
        calls.append(1)
        return smooth_images(32)

    def run():
        return ae.load_or_pretrain(tmp_path, "k2", make_images, in_channels=1, epochs=1, seed=0,
                                   meta={})

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [f.result() for f in [pool.submit(run), pool.submit(run)]]
    assert len(calls) == 1
    assert results[0].digest == results[1].digest


def test_load_or_pretrain_rejects_path_like_key(tmp_path):
    with pytest.raises(ConfigError):
        ae.load_or_pretrain(tmp_path, "../x", lambda: smooth_images(4), in_channels=1, epochs=1,
                            seed=0, meta={})


def test_decoded_samples_train_a_model(saved, images):
    """Regression: decoded samples must not be inference tensors (they feed autograd)."""
    loaded = ae.load(saved[0])
    samples = ae.decode(loaded.decoder, ae.encode(loaded.encoder, images[:8]))
    assert not samples.is_inference() and not samples.requires_grad
    model = build_model("cnn", in_channels=1, image_size=28, num_classes=10)
    loss = nn.functional.cross_entropy(model(samples), torch.zeros(8, dtype=torch.long))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
