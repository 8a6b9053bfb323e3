"""rayagg: Agglomerative Federated Learning (FedAgg) on Ray."""

__version__ = "0.1.0"


def scale(run_dir, *, devices=None, add=None, remove=None) -> str:
    """Asks the live run in ``run_dir`` to change its elastic device count at its next round
    boundary (see :func:`rayagg.client.scale.scale`); returns the run's answer."""
    from rayagg.client.scale import scale as _scale  # imports Ray only when asked

    return _scale(run_dir, devices=devices, add=add, remove=remove)
