"""What every ``rayagg`` command shares: errors as one line, time stamps, the config
options that say they emulate slower machines. Click stops at the CLI: everything
below it sees a RunConfig."""
from __future__ import annotations

import datetime
import pathlib
import sys

import click

from rayagg.config import RunConfig
from rayagg.errors import RayaggError


SET_HELP = ("Set a config value, as if edited in the file: KEY a dotted path (an integer part indexes "
            "a list, e.g. tree.tiers.2.count), VALUE read as YAML (0.01, true, null, [1, 2]). "
            "Repeatable; a later one wins. Validated as the file is (docs/config.md).")


def set_option(help: str = SET_HELP):
    """``--set KEY=VALUE`` (repeatable), passed to the command as ``overrides`` (a tuple)."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help)


def json_option(what: str):
    """``--json``: the command prints one JSON document to stdout (docs/running.md,
    "Machine-readable output"), passed to the command as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True,
                        help=f"Print {what} as one JSON document on stdout instead of text "
                             "(keys in docs/running.md, \"Machine-readable output\").")


def echo_json(document) -> None:
    """Prints ``document`` as strict JSON, keys in the order given, on stdout: a NaN or
    infinite number (an accuracy never measured) as null, a numpy number as its value."""
    import json
    import math

    def strict(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: strict(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [strict(item) for item in value]
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
            return strict(value.item())
        return value

    click.echo(json.dumps(strict(document), indent=2, allow_nan=False))


class user_errors:
    """Turns a RayaggError into a one-line message and exit code 2, no traceback."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, RayaggError):
            click.echo(f"rayagg: error: {exc}", err=True)
            sys.exit(2)
        return False


class RunDirArgument(click.ParamType):
    """A RUN_DIR argument: an existing local directory (checked as ``click.Path`` checks
    it), or an object-store URI (``s3://...``, ``gs://...``), taken as given: whether it
    holds a run is the command's to find out, with an error naming the URI."""

    name = "run_dir"

    def convert(self, value, param, ctx):
        from rayagg.storage import is_uri

        if is_uri(value):
            return value
        return click.Path(file_okay=False, exists=True).convert(value, param, ctx)


class interrupted_while_starting:
    """Ctrl-C before a run's own signal handling is in place (loading data, pretraining the
    autoencoder, joining Ray) exits 130 with one line, as a stop does later, not with
    click's "Aborted!". Nothing is half-written by then: the autoencoder cache is written
    atomically once trained, RUN_DIR only once the cluster answers."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            click.echo("rayagg: stopped by SIGINT while starting, before any round was trained: "
                       "run the same command again to start", err=True)
            sys.exit(130)
        return False


def stamp() -> str:
    """Now, as run directories are suffixed: ``20261203-214501``."""
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def default_run_dir(config: RunConfig, prefix: str = "") -> pathlib.Path:
    """``output.base_dir``/<prefix><name>-<timestamp>, absolute."""
    return config.output.run_dir(f"{prefix}{config.name}", stamp())


def echo_emulation(config: RunConfig) -> None:
    """Says so when the config emulates slower machines: left on by mistake, it would
    only show as slow rounds."""
    slowdown = config.emulation.slowdown
    if slowdown:
        slower = ", ".join(f"{name} x{factor:g}" for name, factor in slowdown.items())
        click.echo(f"rayagg: test bench: emulating slower machines ({slower}; emulation.slowdown)")


def prepare_to_join(address: object) -> None:
    """Before Ray is imported: a cluster joined by ``address`` (None: a local Ray) needs
    token auth set up (rayagg/runtime/auth.py)."""
    if address is not None:
        from rayagg.runtime.auth import join_by_address

        join_by_address()
