"""Command line: ``flask --app docqueue_app <command>`` or ``docqueue <command>``.

Commands print their result as one line of JSON on stdout; logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup, FlaskGroup

from .queue import DocumentQueueService, process_document_queue

queue_cli = AppGroup("queue", help="Work and inspect the document queue.")


def echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, default=str))


@queue_cli.command("process")
@click.option("--limit", type=click.IntRange(min=1), help="Items to claim (default BATCH_SIZE).")
def process_command(limit: int | None) -> None:
    """Run one pass over the queue and print its counts."""
    echo_json(process_document_queue(limit))


@queue_cli.command("stats")
def stats_command() -> None:
    """Print the queue's counts per status."""
    echo_json(DocumentQueueService().get_queue_stats())


def init_app(app: Flask) -> None:
    app.cli.add_command(queue_cli)


def _create_app() -> Flask:
    from . import create_app

    return create_app()


def main() -> None:
    """Entry point of the ``docqueue`` console script."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    FlaskGroup(create_app=_create_app, help="docqueue command line.")(prog_name="docqueue")
