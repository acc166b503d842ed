"""Command line: ``flask --app docqueue_app <command>`` or ``docqueue <command>``.

Commands print their result as one line of JSON on stdout; logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup

from .queue import DocumentQueueService, process_document_queue
from .queue.runner import run_worker

queue_cli = AppGroup("queue", help="Work and inspect the document queue.")


def echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, default=str))


@queue_cli.command("process")
@click.option("--limit", type=click.IntRange(min=1), help="Items to claim (default BATCH_SIZE).")
def process_command(limit: int | None) -> None:
    """Run one pass over the queue and print its counts."""
    echo_json(process_document_queue(limit))


@queue_cli.command("worker")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: BATCH_SIZE.")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), help="Default: POLL_INTERVAL.")
def worker_command(concurrency: int, batch_size: int | None, poll_interval: float | None) -> None:
    """Process the queue until SIGTERM, which finishes the documents in hand."""
    config = current_app.config
    run_worker(
        concurrency,
        batch_size or config["BATCH_SIZE"],
        poll_interval or config["POLL_INTERVAL"],
    )


@queue_cli.command("stats")
def stats_command() -> None:
    """Print the queue's counts per status."""
    echo_json(DocumentQueueService().get_queue_stats())


@queue_cli.command("retry-failed")
def retry_failed_command() -> None:
    """Put every failed item back in the queue."""
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
    service = DocumentQueueService()
    if statuses:
        deleted = service.purge_items(older_than_days, statuses)
    else:
        deleted = service.purge_items(older_than_days)
    echo_json({"deleted": deleted})


def init_app(app: Flask) -> None:
    app.cli.add_command(queue_cli)


def _create_app() -> Flask:
    from . import create_app

    return create_app()


def main() -> None:
    """Entry point of the ``docqueue`` console script."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    FlaskGroup(create_app=_create_app, help="docqueue command line.")(prog_name="docqueue")
