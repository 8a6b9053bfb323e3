"""What decoding costs: one CNN trained centrally on a config's training images, and on the
same images encoded and decoded by its bridge autoencoder (docs/methods.md, "Why").

    python benchmarks/bridge_gap.py jobs/configs/compare/fmnist-cnn-a1.yaml [--autoencoder-epochs 40]

Trains the devices' model for ``--epochs`` on all the leaves' images (real, then decoded)
with the config's lr, momentum, weight decay and batch size, for seeds 0..2, and prints
the test accuracy of each and the autoencoder's reconstruction error.
"""
from __future__ import annotations

from typing import Optional

import click
import torch

from rayagg.config import load_config
from rayagg.learning import autoencoder, models, protocol
from rayagg.learning.averaging import local_epochs
from rayagg.learning.plan import evaluation_split, frozen_autoencoder, load_data, local_data, make_plan


@click.command()
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--autoencoder-epochs", type=int, default=None, help="Override autoencoder.epochs.")
@click.option("--epochs", type=int, default=20)
def main(config_path: str, autoencoder_epochs: Optional[int], epochs: int) -> None:
    config = load_config(config_path)
    if autoencoder_epochs is not None:
        config = config.with_changes(autoencoder={"epochs": autoencoder_epochs})
    dataset = load_data(config)
    plan = make_plan(config, dataset)
    leaves = [node for node in plan.tree.nodes if plan.tree.is_leaf(node)]
    shards = [local_data(plan, leaf, dataset) for leaf in leaves]
    images, labels = torch.cat([s.images for s in shards]), torch.cat([s.labels for s in shards])
    frozen = frozen_autoencoder(plan)
    decoded = autoencoder.decode(frozen.decoder, autoencoder.encode(frozen.encoder, images))
    click.echo(f"autoencoder: {config.autoencoder.epochs} epochs, reconstruction MSE "
               f"{float(((decoded - images) ** 2).mean()):.4f}")
    test, train, model_name = evaluation_split(plan, dataset), config.training, config.tree.tiers[-1].model
    channels, size, _ = plan.image_shape
    for name, inputs in (("real", images), ("decoded", decoded)):
        scores = []
        for seed in range(3):
            torch.manual_seed(seed)
            model = models.build_model(model_name, in_channels=channels, image_size=size,
                                       num_classes=plan.num_classes)
            optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                                        weight_decay=train.weight_decay)
            local_epochs(model, optimizer, inputs, labels, epochs=epochs, batch_size=train.batch_size,
                         generator=torch.Generator().manual_seed(seed))
            scores.append(protocol.evaluate(model, *test)[0])
        click.echo(f"{model_name} on the {len(inputs)} {name} images, {epochs} epochs: test accuracy "
                   + ", ".join(f"{100 * a:.1f}" for a in scores) + " % (seeds 0, 1, 2)")


if __name__ == "__main__":
    main()
