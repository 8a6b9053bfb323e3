"""Model factories for tests that name a model by string (``"factories:edge_with_13_outputs"``).

Importable once the tests folder is on sys.path (``monkeypatch.syspath_prepend``).
Each takes the keyword arguments every factory gets; each but ``small`` is broken in
one way a preflight check must catch.
"""
from torch import nn


def small(*, in_channels, image_size, num_classes):
    """A working model: one convolution, BatchNorm, pooling, a linear head."""
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def edge_with_13_outputs(*, in_channels, image_size, num_classes):
    return small(in_channels=in_channels, image_size=image_size, num_classes=13)


def three_channel_input(*, in_channels, image_size, num_classes):
    return small(in_channels=3, image_size=image_size, num_classes=num_classes)


def raises(*, in_channels, image_size, num_classes):
    raise RuntimeError("no widgets left to build this model")


def returns_a_dict(*, in_channels, image_size, num_classes):
    return {"layers": 3}


def without_parameters(*, in_channels, image_size, num_classes):
    return nn.Flatten()


def detached_output(*, in_channels, image_size, num_classes):
    return _Detached(small(in_channels=in_channels, image_size=image_size,
                           num_classes=num_classes))


class _Detached(nn.Module):
    """Returns logits cut off from the graph: the forward works, the backward cannot."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, images):
        return self.inner(images).detach()


def returns_a_tuple(*, in_channels, image_size, num_classes):
    return _Tuple(small(in_channels=in_channels, image_size=image_size, num_classes=num_classes))


class _Tuple(nn.Module):
    """Returns (logits, auxiliary logits), as torchvision's Inception does in train mode."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, images):
        logits = self.inner(images)
        return logits, logits
