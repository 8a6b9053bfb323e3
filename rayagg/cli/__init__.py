"""The ``rayagg`` command line: one group, its commands in the modules beside this one
(run.py: run, check, pretrain-autoencoder; status.py: status, scale; tools.py: bench,
balance-test, compare; jobs.py: submit, jobs). Importing it imports no Ray: each command
imports what it needs when it runs."""
import click

from rayagg.cli.jobs import jobs_group, submit
from rayagg.cli.run import check, pretrain_autoencoder, run
from rayagg.cli.status import scale, status
from rayagg.cli.tools import balance_test, bench, compare


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """rayagg: Agglomerative Federated Learning (FedAgg) on a tree of Ray actors.

    A tree of nodes (e.g. cloud -> edges -> devices) trains models that grow tier by
    tier. Leaves encode their data once with a frozen autoencoder; codes and labels
    ("bridge samples") travel up the tree, and every parent/child pair distills both
    ways by exchanging logits. See docs/config.md for the config format.
    """


for command in (run, check, pretrain_autoencoder, status, scale, bench, balance_test, compare, submit,
                jobs_group):
    main.add_command(command)

__all__ = ["main"]
