"""Command line: ``flask --app docqueue_app <command>`` or ``docqueue <command>``.

Commands print their result as one line of JSON on stdout; logs go to stderr.

The queue is imported by the commands that use it, not by this module: the
``docqueue`` launcher imports this module, and multiprocessing runs the launcher
again in each child process it starts (the processing sandboxes).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup

queue_cli = AppGroup("queue", help="Work and inspect the document queue.")


def echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, default=str))


@queue_cli.command("process")
@click.option("--limit", type=click.IntRange(min=1), help="Items to claim (default BATCH_SIZE).")
def process_command(limit: int | None) -> None:
    """Run one pass over the queue and print its counts."""
    from .queue import process_document_queue

    echo_json(process_document_queue(limit))


@queue_cli.command("worker")
@click.option(
    "--concurrency", type=click.IntRange(min=1), help="Documents at once. Default: CONCURRENCY."
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: BATCH_SIZE.")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), help="Default: POLL_INTERVAL.")
def worker_command(
    concurrency: int | None, batch_size: int | None, poll_interval: float | None
) -> None:
    """Process the queue until SIGTERM, which finishes the documents in hand."""
    from .queue.runner import run_worker

    config = current_app.config
    run_worker(
        concurrency or config["CONCURRENCY"],
        batch_size or config["BATCH_SIZE"],
        poll_interval or config["POLL_INTERVAL"],
    )


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
@click.option("--older-than-days", type=click.FloatRange(min=0), required=True)
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


def init_app(app: Flask) -> None:
    app.cli.add_command(queue_cli)


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


def _create_app() -> Flask:
    from . import create_app

    return create_app()


def main() -> None:
    """Entry point of the ``docqueue`` console script."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    FlaskGroup(create_app=_create_app, help="docqueue command line.")(prog_name="docqueue")
