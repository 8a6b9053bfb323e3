"""``rayagg submit`` and ``rayagg jobs``: rayagg runs as Ray Jobs (see rayagg/client/jobs.py)."""
from __future__ import annotations

import datetime
import sys
from typing import Optional

import click

from rayagg.cli.common import echo_json, json_option, set_option, stamp, user_errors

ADDRESS_HELP = ("The head's job server (dashboard), e.g. http://HEAD:8265; default $RAY_API_SERVER_ADDRESS, "
                "an http $RAY_ADDRESS, else http://127.0.0.1:8265.")


def _address_option(command):
    return click.option("--address", default=None, metavar="URL", help=ADDRESS_HELP)(command)


@click.command()
@click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(dir_okay=False))
@_address_option
@click.option("--out", "out_dir", default=None, metavar="DIR",
              help="The run directory on the cluster, absolute or ~/... (default: output.base_dir when "
                   "absolute, else ~/rayagg-runs, /<name>-<timestamp>). Shared storage on a multi-machine "
                   "cluster.")
@click.option("--resume", "resume_dir", default=None, metavar="RUN_DIR",
              help="Continue the run in RUN_DIR (on the cluster) after its last checkpoint, with its config.")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Override training.rounds (after any --set).")
@set_option(help="Set a config value, as if edited in CONFIG (with --resume: in the run's config, which "
                 "may then change only what a resume may): KEY a dotted path (an integer part indexes a "
                 "list, e.g. tree.tiers.2.count), VALUE read as YAML (0.01, true, null, [1, 2]). "
                 "Repeatable; a later one wins. The changed config is validated here and travels with "
                 "the job (docs/config.md).")
@click.option("--wait", is_flag=True, help="Stream the job's logs and exit with its status (0 only if it "
                                           "SUCCEEDED; else the run's exit code: 2 an error, 143 stopped).")
@click.option("--working-dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="Ship this directory (e.g. a rayagg checkout) as the job's working directory; without "
                   "it every machine needs rayagg installed.")
@click.option("--pip", multiple=True, metavar="PKG", help="pip package(s) for the job's environment (repeat).")
@click.option("--verbose", is_flag=True, help="The job shows Ray's own log lines too (`rayagg run --verbose`).")
def submit(config_path: Optional[str], address: Optional[str], out_dir: Optional[str],
           resume_dir: Optional[str], rounds: Optional[int], overrides: tuple[str, ...], wait: bool,
           working_dir: Optional[str], pip: tuple[str, ...], verbose: bool) -> None:
    """Submit a run of CONFIG to a Ray cluster as a Ray Job and print its id.

    The config (validated here) travels with the job; its entrypoint is `python -m rayagg
    run` on the cluster, which needs rayagg's code (installed, or --working-dir) and the data
    set (on the head only, unless data.source is local). `rayagg submit --resume RUN_DIR` continues a stopped run. Watch it with
    `rayagg jobs logs JOB` and, on a machine that mounts RUN_DIR, `rayagg status RUN_DIR --watch`.
    """
    from rayagg.client import jobs
    from rayagg.config import load_config, parse_override

    with user_errors():
        if (config_path is None) == (resume_dir is None):
            raise click.UsageError("give CONFIG, or --resume RUN_DIR (not both)")
        if resume_dir is not None and out_dir is not None:
            raise click.UsageError("--resume continues RUN_DIR in place: it takes no --out")
        if resume_dir is not None:
            config, run_dir = None, jobs.cluster_path(resume_dir, "--resume")
            for setting in overrides:  # checked here; the run's config is on the cluster
                parse_override(setting)
        else:
            config = load_config(config_path, overrides)
            if rounds is not None:
                config = config.with_rounds(rounds)
            run_dir = jobs.cluster_run_dir(config, out_dir, stamp())
        job = jobs.submission(config, run_dir, resume=resume_dir is not None, rounds=rounds,
                              working_dir=working_dir, pip=pip, verbose=verbose,
                              overrides=overrides if resume_dir is not None else ())
        address = address or jobs.default_address()
        client = jobs.connect(address)
        job_id = jobs.submit(client, job)
        click.echo(f"rayagg: submitted {job_id} to {address}; run directory (on the cluster): {run_dir}")
        if not wait:
            click.echo(f"rayagg: follow it with `rayagg jobs logs {job_id} --follow --address {address}`; "
                       f"on a machine that mounts it: `rayagg status {run_dir} --watch`")
            return
        try:
            details = jobs.follow(client, job_id, click.echo)
        except KeyboardInterrupt:
            click.echo(f"rayagg: stopped watching; the job goes on (stop it with `rayagg jobs stop {job_id} "
                       f"--address {address}`)", err=True)
            sys.exit(130)
        status = jobs.status_of(details)
        why = f": {details.message}" if details.message and status != "SUCCEEDED" else ""
        click.echo(f"rayagg: job {job_id} {status}{why}")
        sys.exit(jobs.exit_code(details))


@click.group("jobs")
def jobs_group() -> None:
    """List, inspect, follow and stop the runs submitted with `rayagg submit`."""


@jobs_group.command("list")
@_address_option
@click.option("--all", "every", is_flag=True, help="Every job of the cluster, not only rayagg's.")
@json_option("the jobs")
def list_jobs(address: Optional[str], every: bool, as_json: bool) -> None:
    """One line per job: id, status, start time, run directory and message."""
    from rayagg.client import jobs

    with user_errors():
        client = jobs.connect(address or jobs.default_address())
        found = jobs.rayagg_jobs(client, every)
        if as_json:
            echo_json([job_document(job) for job in found])
            return
        if not found:
            click.echo("no jobs on this cluster" if every
                       else "no rayagg jobs on this cluster (--all lists every job)")
        for job in found:
            started = datetime.datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") \
                if job.start_time else "-"
            where = (job.metadata or {}).get("run_dir") or job.entrypoint
            message = f"  {job.message}" if job.message and jobs.status_of(job) != "SUCCEEDED" else ""
            job_id = job.submission_id or job.job_id
            click.echo(f"{job_id:<24} {jobs.status_of(job):<9} {started}  {where}{message}")


def job_document(job) -> dict:
    """One job as `rayagg jobs list --json` prints it (docs/running.md, "Machine-readable
    output"): the start time in ISO 8601 with its UTC offset (None before it starts), the
    run directory None for a job that is no rayagg run."""
    from rayagg.client import jobs

    started = None if not job.start_time else \
        datetime.datetime.fromtimestamp(job.start_time / 1000).astimezone().isoformat(timespec="seconds")
    return {"job_id": job.submission_id or job.job_id, "status": jobs.status_of(job), "start_time": started,
            "run_dir": (job.metadata or {}).get("run_dir"), "entrypoint": job.entrypoint,
            "message": job.message or None}


@jobs_group.command("status")
@click.argument("job_id", metavar="JOB")
@_address_option
def job_status(job_id: str, address: Optional[str]) -> None:
    """The job's status, message, exit code and run directory; exits 0 whatever the status."""
    from rayagg.client import jobs

    with user_errors():
        details = jobs.info(jobs.connect(address or jobs.default_address()), job_id)
        click.echo(f"{job_id}: {jobs.status_of(details)}")
        if details.message:
            click.echo(f"message: {details.message}")
        if details.driver_exit_code is not None:
            click.echo(f"exit code: {details.driver_exit_code}")
        run_dir = (details.metadata or {}).get("run_dir")
        if run_dir:
            click.echo(f"run directory: {run_dir}")


@jobs_group.command("logs")
@click.argument("job_id", metavar="JOB")
@_address_option
@click.option("--follow", is_flag=True, help="Keep printing until the job ends.")
def job_logs(job_id: str, address: Optional[str], follow: bool) -> None:
    """The job's output so far (the run's progress lines)."""
    from rayagg.client import jobs

    with user_errors():
        client = jobs.connect(address or jobs.default_address())
        jobs.info(client, job_id)  # an unknown id is an error naming it
        if follow:
            try:
                jobs.follow(client, job_id, click.echo)
            except KeyboardInterrupt:
                sys.exit(130)
        else:
            click.echo(client.get_job_logs(job_id), nl=False)


@jobs_group.command("stop")
@click.argument("job_id", metavar="JOB")
@_address_option
def job_stop(job_id: str, address: Optional[str]) -> None:
    """Stop the job: Ray sends the run SIGTERM (then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S,
    3 s by default); the run keeps its last complete checkpoint, and `rayagg submit --resume
    RUN_DIR` continues it."""
    from rayagg.client import jobs

    with user_errors():
        client = jobs.connect(address or jobs.default_address())
        details = jobs.info(client, job_id)
        if jobs.status_of(details) in jobs.TERMINAL:
            click.echo(f"rayagg: {job_id} already ended ({jobs.status_of(details)}): nothing to stop")
            return
        client.stop_job(job_id)
        run_dir = (details.metadata or {}).get("run_dir", "RUN_DIR")
        click.echo(f"rayagg: asked {job_id} to stop; continue it later with "
                   f"`rayagg submit --resume {run_dir} --address {address or jobs.default_address()}`")
