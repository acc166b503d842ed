"""Command line: ``flask --app docqueue_app <command>`` or ``docqueue <command>``.

Commands print their result as one line of JSON on stdout; logs go to stderr.

The queue is imported by the commands that use it, not by this module: the
``docqueue`` launcher imports this module, and multiprocessing runs the launcher
again in each child process it starts (the processing sandboxes).
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from functools import partial
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup, ScriptInfo, with_appcontext

from . import create_app
from .config import DEFAULTS, MAX_PURGE_AGE_DAYS, SETTINGS, Number, Refused, Setting
from .states import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY

# A command stopped by a database outage (unreachable, read-only, full, busy, not
# migrated) exits with this, after one line on stderr saying which.
OUTAGE_EXIT_CODE = 3
# What a shell reports for a command ended by SIGINT (128 + 2).
INTERRUPTED_EXIT_CODE = 130


class EndsOnOutage(click.Group):
    """A group whose commands an outage ends with a line on stderr, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            from .database import describe_outage, is_outage

            if not is_outage(error):
                raise
            click.echo(f"Error: {describe_outage(error)}.", err=True)
            ctx.exit(OUTAGE_EXIT_CODE)

    @classmethod
    def like(cls, group: click.Group) -> EndsOnOutage:
        """The same group (options, callback, commands), ending on outages this way."""
        return cls(
            name=group.name,
            commands=group.commands,
            callback=group.callback,
            params=group.params,
            help=group.help,
        )


class QueueCommands(EndsOnOutage, AppGroup):
    """The ``queue`` commands."""


queue_cli = QueueCommands("queue", help="Work and inspect the document queue.")


class Checked(click.ParamType):
    """An option's value checked as a setting is (config.py): same type, same range.

    Infinity, NaN and numbers past what the queue's arithmetic or the database
    holds are a usage error (exit 2), not a traceback or a worker stopping.
    """

    def __init__(self, setting: Setting, name: str) -> None:
        self.setting = setting
        self.name = name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.setting.parse(value)
        except Refused:
            self.fail(f"must be {self.setting.expectation}, got {value!r}", param, ctx)


ITEM_COUNT = Checked(SETTINGS["BATCH_SIZE"], "integer")
# The same bound as the API's purge (schemas.PurgeSchema).
PURGE_AGE = Checked(Number(0, MAX_PURGE_AGE_DAYS), "days")


def default_from(key: str) -> str:
    """How an option's help names the setting its default comes from."""
    return f"Default: DOCQUEUE_{key} ({DEFAULTS[key]:g} when unset)."


def echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, default=str))


@queue_cli.command("process")
@click.option(
    "--limit", type=ITEM_COUNT, help=f"Items to claim in this pass. {default_from('BATCH_SIZE')}"
)
def process_command(limit: int | None) -> None:
    """Run one pass over the queue and print its counts; then send due webhooks."""
    from .queue import process_document_queue
    from .webhooks.lane import send_due_deliveries

    # stdout holds the counts alone: what a processor prints goes to stderr.
    with stdout_to_stderr():
        counts = process_document_queue(limit)
        send_due_deliveries()  # a host driven by cron runs no lane (like /api/cron/process-queue)
    echo_json(counts)


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what is written on stdout to stderr meanwhile, Python's ``print`` and file
    descriptor 1 both: a processor run in this process (PROCESS_ISOLATION=none) may
    write there through a C library or a program it runs, which inherits the
    descriptor. (A sandbox points its own descriptor 1 at stderr.)"""
    with redirect_stdout(sys.stderr):
        saved = _point_stdout_at_stderr()
        try:
            yield
        finally:
            if saved is not None:
                _flush_stdout()  # what was written to sys.__stdout__ meanwhile: to stderr
                os.dup2(saved, 1)
                os.close(saved)


def _point_stdout_at_stderr() -> int | None:
    """Point descriptor 1 at descriptor 2; returns a copy of the old 1 (None if it was closed)."""
    _flush_stdout()
    try:
        saved = os.dup(1)
    except OSError:
        return None  # stdout closed (`>&-`): nothing to keep clean
    os.dup2(2, 1)
    return saved


def _flush_stdout() -> None:
    if sys.__stdout__ is not None:
        sys.__stdout__.flush()


@queue_cli.command("worker")
@click.option(
    "--concurrency",
    type=Checked(SETTINGS["CONCURRENCY"], "integer"),
    help=f"Documents processed at once. {default_from('CONCURRENCY')}",
)
@click.option(
    "--batch-size",
    type=ITEM_COUNT,
    help=f"Items claimed at a time. {default_from('BATCH_SIZE')}",
)
@click.option(
    "--poll-interval",
    type=Checked(SETTINGS["POLL_INTERVAL"], "seconds"),
    help=f"Seconds between looks at an idle queue. {default_from('POLL_INTERVAL')}",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve this worker's counters for Prometheus at http://HOST:PORT/metrics. "
    "Default: not served.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="The address --metrics-port listens on (0.0.0.0: every interface).",
)
def worker_command(
    concurrency: int | None,
    batch_size: int | None,
    poll_interval: float | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Process the queue until SIGTERM or SIGINT, which finish the documents in hand.

    Claimed items not yet started go back to pending; then it exits 0.
    """
    from .queue.runner import run_worker

    if metrics_port is not None:
        serve_worker_metrics(metrics_host, metrics_port)
    start_up_is_over()
    config = current_app.config
    run_worker(
        concurrency or config["CONCURRENCY"],
        batch_size or config["BATCH_SIZE"],
        poll_interval or config["POLL_INTERVAL"],
        stop=click.get_current_context().meta.get(_STOP_FLAG),
    )


def serve_worker_metrics(host: str, port: int) -> None:
    """Listen for scrapes, or stop here (exit 2) naming the address that is refused."""
    from .metrics import serve_process_metrics

    try:
        serve_process_metrics(host, port)
    except OSError as error:
        raise click.BadParameter(
            f"cannot listen on {host}:{port}: {error.strerror or error}",
            param_hint="'--metrics-port'",
        ) from None


@queue_cli.command("stats")
def stats_command() -> None:
    """Print the queue's counts per status."""
    from .queue import DocumentQueueService

    echo_json(DocumentQueueService().get_queue_stats())


@queue_cli.command("retry-failed")
def retry_failed_command() -> None:
    """Put every failed item back in the queue."""
    from .queue import DocumentQueueService

    echo_json({"retried": DocumentQueueService().retry_failed_items()})


@queue_cli.command("purge")
@click.option(
    "--older-than-days",
    type=PURGE_AGE,
    required=True,
    help=f"Age in days of the finished items to delete, 0 to {MAX_PURGE_AGE_DAYS}.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["completed", "failed", "cancelled"]),
    help="Repeatable; default: all three.",
)
def purge_command(older_than_days: float, statuses: tuple[str, ...]) -> None:
    """Delete finished queue items older than N days (documents are kept)."""
    from .queue import DocumentQueueService

    service = DocumentQueueService()
    if statuses:
        deleted = service.purge_items(older_than_days, statuses)
    else:
        deleted = service.purge_items(older_than_days)
    echo_json({"deleted": deleted})


# `docqueue import` exits 0 when every file was stored (or was a duplicate), 1 when
# some file was refused, and OUTAGE_EXIT_CODE when a database outage stopped it.


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--recursive", is_flag=True, help="Import the files of subfolders too.")
@click.option(
    "--priority",
    type=click.IntRange(MIN_PRIORITY, MAX_PRIORITY),
    default=DEFAULT_PRIORITY,
    show_default=True,
    help="Queue priority of every imported document (higher runs first).",
)
@click.option(
    "--callback-url",
    metavar="URL",
    help="Receives the webhook events of every imported document (SPEC §8).",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Then import each new or changed file once it stops changing, until SIGINT or SIGTERM.",
)
@with_appcontext
def import_command(
    paths: tuple[Path, ...],
    recursive: bool,
    priority: int,
    callback_url: str | None,
    watch: bool,
) -> None:
    """Submit every file of PATHS as an upload would be, many files per transaction.

    Prints {"imported": n, "duplicates": n, "rejected": n}; exits 1 when a file
    was refused (each is named on stderr with the reason), 3 when a database
    outage stopped the import, 130 when SIGINT or SIGTERM did (what was stored
    stays stored: run it again); with --watch they end it with 0 (or 1), and a
    folder it cannot watch (the system's inotify limit) ends it with 1.
    """
    from .imports import import_paths

    result = import_paths(paths, recursive, priority, _checked_callback_url(callback_url), watch)
    if result.stopped_by is not None:
        _say_import_stopped(f"Import stopped: {result.stopped_by}.")
    if result.interrupted:
        _say_import_stopped("Import interrupted.")
    if result.watch_lost is not None:
        _say_import_stopped(f"Import stopped: {result.watch_lost}.")
    echo_json(result.counts.as_dict())
    if result.stopped_by is not None:
        click.get_current_context().exit(OUTAGE_EXIT_CODE)
    if result.interrupted:
        click.get_current_context().exit(INTERRUPTED_EXIT_CODE)
    click.get_current_context().exit(1 if result.counts.rejected or result.watch_lost else 0)


def _say_import_stopped(why: str) -> None:
    click.echo(
        f"{why} The files the summary counts are stored; run the same import again "
        "to store the rest (stored files come back as duplicates).",
        err=True,
    )


def _checked_callback_url(url: str | None) -> str | None:
    """The URL if webhooks may be sent there (as at upload), else a usage error."""
    from .webhooks.destinations import CannotCheckNow, RefusedDestination, checked_callback_url

    try:
        return checked_callback_url(url, current_app.config["WEBHOOK_ALLOW_PRIVATE"])
    except RefusedDestination as refused:
        raise click.BadParameter(str(refused), param_hint="'--callback-url'") from None
    except CannotCheckNow as reason:
        raise click.ClickException(
            f"--callback-url could not be checked now: {reason}. Nothing was imported; "
            "try again later."
        ) from None


def init_app(app: Flask) -> None:
    app.cli.add_command(queue_cli)
    app.cli.add_command(import_command)


class DeferredCommand(click.Command):
    """Stands for a command whose module is costly to import, until it is run.

    ``load`` returns the real command; it is called when this one is run or
    asked for its help, so ``flask --help`` and every other command go without
    the import.
    """

    def __init__(self, name: str, load: Callable[[], click.Command], help: str) -> None:
        super().__init__(name, help=help)
        self.load = load

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # The context belongs to the real command, so click runs that one.
        return self.load().make_context(info_name, args, parent=parent, **extra)


# The commands that serve no HTTP: the ``docqueue`` script builds them an app
# without the blueprints, /metrics and the scheduler (``create_app(serve_http=False)``).
COMMANDS_WITHOUT_HTTP = frozenset({"queue", "import", "db"})
WORKER_COMMAND = ["queue", "worker"]
# Where `docqueue queue worker` finds the stop flag its early signal handlers set.
_STOP_FLAG = "docqueue.worker_stop"


def show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    flask, python = version("flask"), sys.version.split()[0]
    click.echo(f"docqueue {version('docqueue')} (Flask {flask}, Python {python})")
    ctx.exit()


class DocqueueGroup(FlaskGroup):
    """The ``docqueue`` command: it knows the command before the app is built.

    So a worker or ``queue stats`` gets the app without what serves requests,
    and a worker heeds SIGTERM from its first instants, not only once started.
    Its ``--version`` is docqueue's, where Flask's group shows Flask's.
    """

    def __init__(self, **options: Any) -> None:
        version = click.Option(
            ["--version"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=show_version,
            help="Show docqueue's version.",
        )
        options["params"] = [*options.get("params", []), version]
        super().__init__(add_version_option=False, **options)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in COMMANDS_WITHOUT_HTTP:
            # ``create_app`` is the factory this group was given: it takes ``serve_http``.
            info = ctx.ensure_object(ScriptInfo)
            info.create_app = partial(self.create_app, serve_http=False)
        if args[:2] == WORKER_COMMAND:
            ctx.meta[_STOP_FLAG] = stop_flag_set_by_signals()
            gc.disable()  # until start_up_is_over()
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        # Flask would print the traceback of an app that fails to load (a bad
        # setting) and list the commands without the app's: the help ends instead
        # with the ConfigError's one line, as any command does.
        ctx.ensure_object(ScriptInfo).load_app()
        return super().list_commands(ctx)


def listing_flask_commands() -> bool:
    """Whether ``flask --help`` (Flask's own group) is listing commands in this call.

    Flask's help lists its own commands (run, shell, routes) even when the app
    cannot load: it shows the error of an app it cannot find (NoAppException) in
    one line, and any other as a traceback. ``create_app`` raises a bad setting as
    the former there; everywhere else it stays a ConfigError, which ends a command
    with its one line.
    """
    listing = FlaskGroup.list_commands.__code__
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code is listing:
            return True
        frame = frame.f_back
    return False


def stop_flag_set_by_signals() -> threading.Event:
    """A flag SIGTERM and SIGINT set from now on, until the worker installs its own handlers.

    Start-up takes a good fraction of a second (imports, the app, the first
    connection); a SIGTERM meanwhile (a deploy, a quick restart) would kill the
    process with -15. Remembered here, it makes the worker stop as soon as it
    starts, with nothing claimed, and exit 0.
    """
    stop = threading.Event()

    def remember(_signum: int, _frame: Any) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, remember)
    return stop


def start_up_is_over() -> None:
    """A worker's start-up builds ~100,000 objects (modules, the app, SQLAlchemy's
    mappers) that live as long as it does, and the collector, left on, walked them
    all several times over while they were built: 56-57 ms of a 0.45-0.52 s start
    (spawn to first document, medians of five alternated runs of ``bench.perf
    --only startup``). Collection is off while they are built; then they are
    frozen, so that no later collection walks them again, and it is on again.
    """
    gc.freeze()
    gc.enable()


def main() -> None:
    """Entry point of the ``docqueue`` console script."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    # Alembic logs each plugin it sets up at INFO as it is imported, before its own
    # logging settings (migrations/alembic.ini) apply: seven lines of its internals
    # on every `db` command, which the `flask` launcher, logging nothing at INFO, hides.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    DocqueueGroup(create_app=create_app, help="docqueue command line.")(prog_name="docqueue")
