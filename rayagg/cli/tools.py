"""``rayagg bench`` and ``rayagg balance-test``: runs of one config compared (rayagg/tools/)."""
from __future__ import annotations

import pathlib
from typing import Optional

import click

from rayagg.cli.common import default_run_dir, prepare_to_join, user_errors
from rayagg.config import BALANCE_POLICIES, absolute_path, load_config


@click.command("balance-test")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--policies", default=",".join(BALANCE_POLICIES), show_default=True,
              help="Comma-separated balancing policies to run.")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Override training.rounds.")
@click.option("--seeds", default="0", show_default=True,
              help="Comma-separated training seeds; every policy runs with each.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the results as a JSON list to this file.")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Where the runs go, one directory each (default: runs/balance-test-<name>-<timestamp>).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (as for `run`).")
def balance_test(config_path: str, policies: str, rounds: Optional[int], seeds: str, json_path: Optional[str],
                 out_dir: Optional[str], address: Optional[str]) -> None:
    """Run CONFIG's tree under each balancing policy on the same seed and compare them.

    Prints, per policy: the median seconds per round (and the change against `none`),
    the median imbalance of the edges' busy seconds (max / mean; 1.0 is even), the
    devices moved between rounds and the cloud's final test accuracy. Each run is a
    full run directory under --out. With several --seeds, each figure is the mean and
    its range.
    """
    from rayagg.learning import preflight
    from rayagg.tools import balance_test as balance_tool

    with user_errors():
        names = balance_tool.parse_policies(policies)
        try:
            seed_list = [int(seed) for seed in seeds.split(",") if seed.strip()]
        except ValueError:
            raise click.BadParameter(f"not a comma-separated list of integers: {seeds!r}",
                                     param_hint="--seeds") from None
        config = load_config(config_path)
        if rounds is not None:
            config = config.with_rounds(rounds)
        preflight.check_inputs(config)
        out = absolute_path(out_dir or default_run_dir(config, prefix="balance-test-"))
        prepare_to_join(address)
        results = balance_tool.compare(config, names, out, seeds=seed_list or [0], address=address,
                                       echo=click.echo)
        click.echo(balance_tool.table(results))
        if json_path is not None:
            balance_tool.write_json(results, pathlib.Path(json_path))
            click.echo(f"rayagg: results in {json_path}")


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rounds of each run (overrides training.rounds).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures as a JSON object to this file.")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Where the two runs go, as local/ and ray/ (default: runs/bench-<name>-<timestamp>).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (as for `run`).")
def bench(config_path: str, rounds: int, json_path: Optional[str], out_dir: Optional[str],
          address: Optional[str]) -> None:
    """Run CONFIG on Ray and with the in-process driver; show where a round's time goes.

    Prints the median seconds per round of both runs and their ratio; the critical path
    (the longest chain of calls that must run one after another, from each call's
    measured time) and how close Ray's rounds came to it; the share of round time that
    is not torch work on that path; bridge samples trained on per second; peak memory;
    and the GFLOP/s achieved against this machine's matrix multiply. Both runs are full
    run directories under --out.
    """
    from rayagg.learning import preflight

    with user_errors():
        config = load_config(config_path).with_rounds(rounds)
        preflight.check_inputs(config)
        out = absolute_path(out_dir or default_run_dir(config, prefix="bench-"))
        prepare_to_join(address)
        from rayagg.tools import bench as bench_tool

        result = bench_tool.bench(config, out, address=address, echo=click.echo)
        click.echo(bench_tool.report(result))
        if json_path is not None:
            bench_tool.write_json(result, pathlib.Path(json_path))
            click.echo(f"rayagg: figures in {json_path}")

