"""``rayagg bench``, ``rayagg balance-test`` and ``rayagg compare``: runs of one config compared
(rayagg/tools/)."""
from __future__ import annotations

import pathlib
from typing import Optional

import click

from rayagg.cli.common import default_run_dir, prepare_to_join, set_option, user_errors
from rayagg.config import BALANCE_POLICIES, METHODS, absolute_path, load_config


@click.command("balance-test")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--policies", default=",".join(BALANCE_POLICIES), show_default=True,
              help="Comma-separated balancing policies to run.")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Override training.rounds (after any --set).")
@set_option()
@click.option("--seeds", default="0", show_default=True,
              help="Comma-separated training seeds; every policy runs with each.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the results as a JSON list to this file.")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Where the runs go, one directory each (default: runs/balance-test-<name>-<timestamp>).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (as for `run`).")
def balance_test(config_path: str, policies: str, rounds: Optional[int], overrides: tuple[str, ...], seeds: str,
                 json_path: Optional[str], out_dir: Optional[str], address: Optional[str]) -> None:
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
        config = load_config(config_path, overrides)
        if rounds is not None:
            config = config.with_rounds(rounds)
        preflight.check_inputs(config)
        out = local_out(out_dir or default_run_dir(config, prefix="balance-test-"))
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
              help="Rounds of each run (overrides training.rounds, also after any --set).")
@set_option()
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures as a JSON object to this file.")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Where the two runs go, as local/ and ray/ (default: runs/bench-<name>-<timestamp>).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (as for `run`).")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the Ray run's calls to this file as a Chrome/Perfetto trace "
                   "(ui.perfetto.dev): a track per host and node, the critical path marked.")
def bench(config_path: str, rounds: int, overrides: tuple[str, ...], json_path: Optional[str],
          out_dir: Optional[str], address: Optional[str], trace_path: Optional[str]) -> None:
    """Run CONFIG on Ray and with the in-process driver; show where a round's time goes.

    Prints the median seconds per round of both runs and their ratio; the critical path
    (the longest chain of calls that must run one after another, from each call's
    measured time) and how close Ray's rounds came to it; the share of round time that
    is not torch work on that path; bridge samples trained on per second; peak memory;
    and the GFLOP/s achieved against this machine's matrix multiply. Both runs are full
    run directories under --out. With --trace, the Ray run's calls also go to a trace file
    (docs/benchmarks.md, "Tracing a round").
    """
    from rayagg.learning import preflight

    with user_errors():
        config = load_config(config_path, overrides).with_rounds(rounds)
        preflight.check_inputs(config)
        out = local_out(out_dir or default_run_dir(config, prefix="bench-"))
        prepare_to_join(address)
        from rayagg.tools import bench as bench_tool

        trace = None if trace_path is None else pathlib.Path(trace_path).absolute()
        result = bench_tool.bench(config, out, address=address, echo=click.echo, trace=trace)
        click.echo(bench_tool.report(result))
        if json_path is not None:
            bench_tool.write_json(result, pathlib.Path(json_path))
            click.echo(f"rayagg: figures in {json_path}")
        if trace is not None:
            click.echo(f"rayagg: trace in {trace_path} (open it in ui.perfetto.dev)")



@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--methods", default=",".join(METHODS), show_default=True,
              help="Comma-separated training methods to run CONFIG under (may be empty with --variant).")
@click.option("--seeds", default="0", show_default=True,
              help="Comma-separated training seeds; every method and variant runs with each.")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Override training.rounds (the variants' too; after any --set).")
@set_option(help="Set a config value in CONFIG and in every --variant config, as if edited in each "
                 "file: KEY a dotted path (an integer part indexes a list, e.g. tree.tiers.2.count), "
                 "VALUE read as YAML (0.01, true, null, [1, 2]). Repeatable; a later one wins. Each "
                 "config is validated as its file is (docs/config.md).")
@click.option("--variant", "variants", multiple=True, metavar="NAME=CONFIG",
              help="Also run the config at CONFIG as it is (its own method; only the seed and --rounds "
                   "replaced), named NAME. Repeatable.")
@click.option("--targets", default="", metavar="ACC,...",
              help="Cloud accuracies as fractions in (0, 1], e.g. 0.5,0.6: the rounds each run took to "
                   "reach them.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the results as a JSON list to this file (as OUT/compare.json).")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Where the runs and the report go (default: runs/compare-<name>-<timestamp>).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (as for `run`).")
@click.option("--local", is_flag=True, help="Run each with the in-process driver instead of Ray.")
def compare(config_path: str, methods: str, seeds: str, rounds: Optional[int], overrides: tuple[str, ...],
            variants: tuple[str, ...], targets: str, json_path: Optional[str], out_dir: Optional[str],
            address: Optional[str], local: bool) -> None:
    """Train CONFIG's tree under each method (and each --variant) on the same seeds; compare them.

    Prints, per method or variant: the cloud's (the root tier's) final and best test
    accuracy, each other tier's final mean accuracy, the rounds to reach each --targets
    accuracy (the mean over the seeds that reached it, and how many did), the median
    seconds per round and the bytes per round that crossed the tree's links. With
    several --seeds, the cloud's figures are the mean and its range. Each run is a full
    run directory OUT/<method or variant>-seed<k>; OUT also gets compare.txt (the table),
    compare.json (one row per run) and compare.png (the cloud's accuracy by round).
    Every config and run directory is checked before the first run starts.
    """
    from rayagg.tools import compare as compare_tool
    from rayagg.tools import compare_report

    with user_errors():
        if local and address is not None:
            raise click.UsageError("--local runs in this process: it takes no --address")
        method_names, seed_list = compare_tool.parse_methods(methods), compare_tool.parse_seeds(seeds)
        target_list = compare_tool.parse_targets(targets)
        variant_configs = compare_tool.parse_variants(variants, overrides)
        config = load_config(config_path, overrides)
        out = local_out(out_dir or default_run_dir(config, prefix="compare-"))
        runs = compare_tool.plan_runs(config, method_names, seed_list, out, variants=variant_configs,
                                      rounds=rounds)
        compare_tool.check_inputs(runs)
        if not local:
            prepare_to_join(address)
        results = compare_tool.run_all(runs, target_list, address=address, local=local, echo=click.echo)
        click.echo(compare_report.write_report(results, target_list, out))
        click.echo(f"rayagg: report in {out / compare_report.TABLE_FILE}, {compare_report.JSON_FILE}, "
                   f"{compare_report.PLOT_FILE}")
        if json_path is not None:
            compare_report.write_json(results, pathlib.Path(json_path))
            click.echo(f"rayagg: results in {json_path}")


def local_out(out_dir) -> pathlib.Path:
    """The tools' output folder, absolute. They write local run directories only (their
    reports, plots and timings are for the machine that runs them): a URI, given with
    --out or through ``output.base_dir``, is a usage error rather than a folder named 's3:'."""
    out = absolute_path(out_dir)
    if not isinstance(out, pathlib.Path):
        raise click.BadParameter(f"{out}: bench, balance-test and compare write to a local folder; "
                                 "give a local path (rayagg run takes object-store URIs)", param_hint="--out")
    return out
