"""Configuration: the one place that reads the environment.

Settings follow Flask's convention: ``DOCQUEUE_<NAME>`` environment variables become
``app.config["<NAME>"]`` (parsed as JSON where possible, so ``1.5`` and ``true`` work),
``DATABASE_URL`` is read as is, and the mapping given to ``create_app`` wins over both.
Then every setting is checked against its type and range (``SETTINGS``); the first
bad one stops the start with a ConfigError naming it, its value and what it must be.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from flask import Config, Flask

from .processing.options import OCR_AUTO, OCR_MODES
from .webhooks.destinations import RefusedDestination, parse_url

ENV_PREFIX = "DOCQUEUE"

DEFAULTS: dict[str, Any] = {
    "SCHEDULER_ENABLED": True,
    "POLL_INTERVAL": 1.0,
    "BATCH_SIZE": 10,
    # Documents processed at once by the in-app scheduler of a host (one
    # gunicorn worker per host runs it; `queue worker --concurrency` is per process).
    "CONCURRENCY": 2,
    "MAX_ATTEMPTS": 5,
    "RETRY_BASE_SECONDS": 10.0,
    "RETRY_MAX_SECONDS": 3600.0,
    "LEASE_SECONDS": 300.0,
    "MAX_UPLOAD_MB": 50.0,
    "CRON_SECRET": None,
    "ADMIN_PASSWORD": None,
    "API_TOKEN": None,
    "PROCESSOR": "docqueue_app.processing:extract",
    "PROCESS_ISOLATION": "subprocess",
    "PROCESS_MEMORY_MB": 1024,
    "PROCESS_TIMEOUT_SECONDS": 300.0,
    "RETENTION_DAYS": 30,
    "OCR": OCR_AUTO,
    "WEBHOOK_URL": None,
    "WEBHOOK_SECRET": None,
    "WEBHOOK_MAX_ATTEMPTS": 8,
    "WEBHOOK_TIMEOUT_SECONDS": 10.0,
    "WEBHOOK_ALLOW_PRIVATE": False,
}

# Secrets are compared byte for byte, so they must never be parsed as JSON
# (a token such as ``123`` or ``true`` would otherwise change type). Flask's
# SECRET_KEY neither: as the number 123 it failed every page's CSRF signing.
SECRET_KEYS = ("CRON_SECRET", "ADMIN_PASSWORD", "API_TOKEN", "WEBHOOK_SECRET", "SECRET_KEY")

# What an INTEGER column holds on every back end (PostgreSQL's are 32-bit, SQLite's
# 64-bit): a larger id or count would fail in the database, so input is refused first.
MAX_INTEGER = 2**31 - 1
MAX_PURGE_AGE_DAYS = 36500  # a century: older than any finished item can be
# No wait, lease or timeout of docqueue needs more; more, and the arithmetic on
# dates and timeouts can overflow (1e10 s made the worker's threads die).
MAX_SECONDS = 86400.0
# Each unit is a thread, and with isolation a child process, of its own.
MAX_CONCURRENCY = 1024
# A file is one value in the database: SQLite's are capped at 10^9 bytes by
# default (SQLITE_MAX_LENGTH), PostgreSQL's bytea at 1 GiB.
MAX_UPLOAD_MB = 900.0
# RLIMIT_AS in bytes must fit in 64 bits; a terabyte is more than any host has.
MAX_PROCESS_MEMORY_MB = 1024 * 1024
ISOLATION_MODES = ("subprocess", "none")


class ConfigError(click.ClickException, ValueError):
    """A setting docqueue cannot run with; the message names it, its value and what it must be.

    A click exception, so both launchers (``docqueue`` and ``flask --app docqueue_app``)
    end any command with that one line on stderr and exit code 2, a usage error.
    """

    exit_code = 2


class Refused(ValueError):
    """A value is not what the setting expects (its ``expectation`` says what is)."""


class Setting:
    """What a setting must be: ``parse`` returns its value, or raises Refused."""

    expectation: str

    def parse(self, value: Any) -> Any:
        raise NotImplementedError

    def shown(self, value: Any) -> Any:
        """The value as an error message may show it."""
        return value


@dataclass(frozen=True)
class Number(Setting):
    """A finite number from ``low`` (excluded if ``low_excluded``) to ``high``."""

    low: float
    high: float
    low_excluded: bool = False

    @property
    def expectation(self) -> str:
        low = f"> {self.low:g}" if self.low_excluded else f">= {self.low:g}"
        return f"a number {low} and <= {self.high:g}"

    def parse(self, value: Any) -> float:
        number = _as_number(value, float)
        too_low = number <= self.low if self.low_excluded else number < self.low
        if not math.isfinite(number) or too_low or number > self.high:
            raise Refused
        return number


@dataclass(frozen=True)
class WholeNumber(Setting):
    """An integer from ``low`` to ``high``: ``2.0`` is 2, but ``2.9`` is refused, not cut to 2."""

    low: int
    high: int

    @property
    def expectation(self) -> str:
        return f"a whole number >= {self.low} and <= {self.high}"

    def parse(self, value: Any) -> int:
        if isinstance(value, float):
            if not value.is_integer():
                raise Refused
            value = int(value)
        number = _as_number(value, int)
        if not self.low <= number <= self.high:
            raise Refused
        return number


def _as_number(value: Any, kind: Callable[[Any], Any]) -> Any:
    # JSON has parsed the environment's numbers already; a string is a mapping's or
    # the command line's. A boolean is not a number here, whatever Python says.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Refused
    try:
        return kind(value)
    except (ValueError, OverflowError):
        raise Refused from None


@dataclass(frozen=True)
class Flag(Setting):
    """A boolean: JSON's true and false, 1 and 0, and the usual words for them."""

    expectation = "true or false"
    _TRUE = ("1", "true", "yes", "on")
    _FALSE = ("0", "false", "no", "off")

    def parse(self, value: Any) -> bool:
        word = str(value).strip().lower() if isinstance(value, str | int) else None
        if word in self._TRUE:
            return True
        if word in self._FALSE:
            return False
        raise Refused


@dataclass(frozen=True)
class Choice(Setting):
    """One of a few words, in any case."""

    choices: tuple[str, ...]

    @property
    def expectation(self) -> str:
        return f"one of {', '.join(self.choices)}"

    def parse(self, value: Any) -> str:
        word = value.strip().lower() if isinstance(value, str) else None
        if word not in self.choices:
            raise Refused
        return word


@dataclass(frozen=True)
class Text(Setting):
    """Any text, a secret for instance; blank or unset is None (a blank secret is none)."""

    expectation = "text"

    def parse(self, value: Any) -> str | None:
        return None if value is None else str(value) or None


@dataclass(frozen=True)
class WebhookUrl(Setting):
    """An http or https URL, by the rule the webhook sender applies (SPEC §8).

    Its host is resolved when a delivery is sent, not at start: a name that does
    not resolve yet must not keep docqueue from starting.
    """

    expectation = "an http or https URL"

    def parse(self, value: Any) -> str | None:
        url = Text().parse(value)
        if url is not None:
            try:
                parse_url(url)
            except RefusedDestination:
                raise Refused from None
        return url


@dataclass(frozen=True)
class ProcessorName(Setting):
    """``module:callable``, dotted names on both sides (SPEC §5).

    Only the form is checked. Whether the module can be imported depends on the
    process: ``db upgrade`` or ``queue stats`` need not see the processor's code
    on their path, and importing it here would load it, native parsers and all,
    into the server and the worker, which run it in a sandbox precisely so that
    they never do. A module that cannot be imported fails each document's
    attempt with the reason, until the setting is fixed.
    """

    expectation = "module:callable"

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise Refused
        module, separator, attribute = value.partition(":")
        names = [*module.split("."), *attribute.split(".")]
        if not (separator and all(name.isidentifier() for name in names)):
            raise Refused
        return value


@dataclass(frozen=True)
class DatabaseUrl(Setting):
    """A SQLAlchemy URL of SQLite or PostgreSQL; unset, the instance folder's SQLite file."""

    expectation = "a sqlite:// or postgresql:// URL"

    def parse(self, value: Any) -> str | None:
        url = Text().parse(value)
        if url is None:
            return None
        if not normalize_database_url(url).startswith(("sqlite:", "postgresql+psycopg://")):
            raise Refused
        if not _parses(normalize_database_url(url)):
            raise Refused  # a port that is no number, 'sqlite:' without its slashes...
        return url

    def shown(self, value: Any) -> str:
        # Only the scheme: the rest may hold a password.
        return str(value).split(":", 1)[0] + ":..."


def _parses(url: str) -> bool:
    """Whether SQLAlchemy can read ``url`` (imported here, not by the sandbox children)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError):
        return False
    return True


_SECONDS = Number(0, MAX_SECONDS, low_excluded=True)
_DELAY_SECONDS = Number(0, MAX_SECONDS)
_COUNT = WholeNumber(1, MAX_INTEGER)

# Every setting of SPEC §2 and what it must be: the one place settings are checked.
SETTINGS: dict[str, Setting] = {
    "DATABASE_URL": DatabaseUrl(),
    "SCHEDULER_ENABLED": Flag(),
    # Below 10 ms a poll is a busy loop.
    "POLL_INTERVAL": Number(0.01, MAX_SECONDS),
    "BATCH_SIZE": _COUNT,
    "CONCURRENCY": WholeNumber(1, MAX_CONCURRENCY),
    "MAX_ATTEMPTS": _COUNT,
    "RETRY_BASE_SECONDS": _DELAY_SECONDS,
    "RETRY_MAX_SECONDS": _DELAY_SECONDS,
    "LEASE_SECONDS": _SECONDS,
    "MAX_UPLOAD_MB": Number(0, MAX_UPLOAD_MB, low_excluded=True),
    "CRON_SECRET": Text(),
    "ADMIN_PASSWORD": Text(),
    "API_TOKEN": Text(),
    "PROCESSOR": ProcessorName(),
    "PROCESS_ISOLATION": Choice(ISOLATION_MODES),
    "PROCESS_MEMORY_MB": WholeNumber(1, MAX_PROCESS_MEMORY_MB),
    "PROCESS_TIMEOUT_SECONDS": _SECONDS,
    # At least a day: 0 (or less, before it was checked) deleted every finished
    # item and webhook delivery at the first prune. `queue purge` deletes on purpose.
    "RETENTION_DAYS": WholeNumber(1, MAX_PURGE_AGE_DAYS),
    "OCR": Choice(OCR_MODES),
    "WEBHOOK_URL": WebhookUrl(),
    "WEBHOOK_SECRET": Text(),
    "WEBHOOK_MAX_ATTEMPTS": _COUNT,
    "WEBHOOK_TIMEOUT_SECONDS": _SECONDS,
    "WEBHOOK_ALLOW_PRIVATE": Flag(),
}

SQLITE_BUSY_TIMEOUT_SECONDS = 30
# PostgreSQL connections must fail rather than hang: a connect timeout (an
# unreachable host answers nothing), TCP keepalives and a user timeout (a
# connection dropped silently, by a failover or a firewall, is noticed in about
# 30 s instead of the kernel's 15 minutes), and a statement timeout (nothing
# docqueue runs takes a minute; a statement that does is stuck behind a lock).
# Sessions run in UTC, as docqueue's timestamps are, whatever the server's default:
# psycopg then reads a timestamptz tagged with datetime.UTC itself, which costs
# nothing to convert, where a zone such as Etc/UTC cost a claim of 100 more CPU in
# reading its five timestamps a row than running the claim (0.39 against 0.22 ms).
POSTGRESQL_CONNECT_ARGS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
    "options": "-c statement_timeout=60s -c TimeZone=UTC",
}

# Multipart framing around the file: headers, boundaries and the small form fields.
_MULTIPART_OVERHEAD_BYTES = 1024 * 1024


def load_config(app: Flask, overrides: Mapping[str, Any] | None = None) -> None:
    """Fill ``app.config`` from defaults, the environment and ``overrides``, checked.

    Raises ConfigError for the first setting that is not what it must be.
    """
    _read_settings(app.config, overrides)
    app.config["SQLALCHEMY_DATABASE_URI"] = normalize_database_url(
        app.config["DATABASE_URL"] or default_sqlite_url(app)
    )
    _check_sqlite_folder(app.config["SQLALCHEMY_DATABASE_URI"], app.config["DATABASE_URL"] is None)
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options(app.config))
    app.config["MAX_CONTENT_LENGTH"] = upload_limit_bytes(app.config) + _MULTIPART_OVERHEAD_BYTES
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret_key(app)


def check_environment() -> None:
    """Raise ConfigError if the environment holds a bad setting, or names folders
    docqueue cannot use; the app it reads them into is left unbuilt.

    For gunicorn's master, which refuses to start then, before any worker does.
    """
    load_config(Flask(__package__))


def _read_settings(config: Config, overrides: Mapping[str, Any] | None = None) -> None:
    config.from_mapping(DEFAULTS)
    config.from_prefixed_env(ENV_PREFIX)
    for key in SECRET_KEYS:
        raw = os.environ.get(f"{ENV_PREFIX}_{key}")
        if raw is not None:
            config[key] = raw
    config["DATABASE_URL"] = os.environ.get("DATABASE_URL") or None
    if overrides:
        config.update(overrides)
    for key, setting in SETTINGS.items():
        config[key] = _checked(key, setting, config[key], overridden=key in (overrides or {}))


def upload_limit_bytes(config: Mapping[str, Any]) -> int:
    return int(config["MAX_UPLOAD_MB"] * 1024 * 1024)


def default_sqlite_url(app: Flask) -> str:
    try:
        os.makedirs(app.instance_path, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"DATABASE_URL is unset and its folder {app.instance_path} cannot be made "
            f"({error.strerror}): set DATABASE_URL, or let this user write it"
        ) from None
    return f"sqlite:///{Path(app.instance_path) / 'docqueue.db'}"


def _check_sqlite_folder(uri: str, by_default: bool) -> None:
    """Refuse a SQLite file in a folder missing or unwritable: SQLite writes its
    journal beside the file (docqueue its scheduler lock and wake sockets too), so
    every command failed, a worker and the server with a traceback."""
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return
    if database.startswith("file:"):
        return  # a SQLite URI filename: SQLite reads it, and may need no folder
    folder = os.path.dirname(os.path.abspath(database))
    if not os.path.isdir(folder):
        problem = "a folder that does not exist"
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem = "a folder that this user cannot write (SQLite writes its journal there)"
    else:
        return
    where = "is unset and its database is" if by_default else "names a SQLite database"
    raise ConfigError(f"DATABASE_URL {where} in {folder}, {problem}")


def normalize_database_url(url: str) -> str:
    """Map every spelling of PostgreSQL onto the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def engine_options(config: Mapping[str, Any]) -> dict[str, Any]:
    url = normalize_database_url(config["DATABASE_URL"] or "sqlite://")
    if url.startswith("sqlite"):
        # The busy timeout lets concurrent writers (scheduler, workers, requests)
        # wait for the write lock instead of failing with "database is locked".
        return {
            "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
        }
    # No pool_pre_ping: database.py pings only connections that sat idle.
    return {"connect_args": POSTGRESQL_CONNECT_ARGS}


def _checked(key: str, setting: Setting, value: Any, overridden: bool) -> Any:
    try:
        return setting.parse(value)
    except Refused:
        variable = environment_variable(key)
        raw = os.environ.get(variable)
        # The value as the user wrote it: 'null', not None; '1e10', not 10000000000.0.
        shown = raw if raw is not None and not overridden else value
        raise ConfigError(
            f"{variable} must be {setting.expectation}, got {setting.shown(shown)!r}"
        ) from None


def environment_variable(key: str) -> str:
    return key if key == "DATABASE_URL" else f"{ENV_PREFIX}_{key}"


def _instance_secret_key(app: Flask) -> str:
    """A key kept in the instance folder, so every gunicorn worker signs CSRF tokens alike."""
    path = Path(app.instance_path) / "secret_key"
    try:
        return _read_or_make_key(path)
    except OSError as error:
        done, access = ("read", "read") if path.exists() else ("made", "write")
        raise ConfigError(
            f"DOCQUEUE_SECRET_KEY is unset and {path} cannot be {done} ({error.strerror}): "
            f"set DOCQUEUE_SECRET_KEY, or let this user {access} it"
        ) from None


def _read_or_make_key(path: Path) -> str:
    os.makedirs(path.parent, exist_ok=True)
    if not path.exists():
        # Written aside then linked: two workers starting at once must agree on one key.
        scratch = path.with_name(f"secret_key.{os.getpid()}")
        scratch.write_text(secrets.token_hex(32))
        scratch.chmod(0o600)
        try:
            os.link(scratch, path)
        except FileExistsError:
            pass
        finally:
            scratch.unlink()
    return path.read_text().strip()
