import logging
import time
from contextlib import contextmanager
from logging.config import fileConfig

import click
from flask import current_app
from sqlalchemy.exc import OperationalError

from alembic import context
from alembic.migration import MigrationContext
from docqueue_app.cli import OUTAGE_EXIT_CODE
from docqueue_app.models import SQLITE_WRITE_OPTION

# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config = context.config

# Interpret the config file for Python logging.
# This line sets up loggers basically.
fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger('alembic.env')

# PostgreSQL: how long each try waits for a lock (the service's queries on that
# table wait behind it meanwhile), and how many tries before giving up.
LOCK_TIMEOUT_SECONDS = 2.0
LOCK_TRIES = 5
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout
UPGRADE_LOCK_KEY = 0x646F6371  # pg_advisory_lock's key for db upgrade: "docq"


def get_engine():
    return current_app.extensions['migrate'].db.engine


def get_engine_url():
    try:
        return get_engine().url.render_as_string(hide_password=False).replace(
            '%', '%%')
    except AttributeError:
        return str(get_engine().url).replace('%', '%%')


# add your model's MetaData object here
# for 'autogenerate' support
# from myapp import mymodel
# target_metadata = mymodel.Base.metadata
config.set_main_option('sqlalchemy.url', get_engine_url())
target_db = current_app.extensions['migrate'].db

# other values from the config, defined by the needs of env.py,
# can be acquired:
# my_important_option = config.get_main_option("my_important_option")
# ... etc.


def get_metadata():
    if hasattr(target_db, 'metadatas'):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.

    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url, target_metadata=get_metadata(), literal_binds=True
    )

    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    # this callback is used to prevent an auto-migration from being generated
    # when there are no changes to the schema
    # reference: http://alembic.zzzcomputing.com/en/latest/cookbook.html
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, 'autogenerate', False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info('No changes in schema detected.')

    conf_args = current_app.extensions['migrate'].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives

    connectable = get_engine()

    def configure(connection, **options):
        context.configure(
            connection=connection,
            target_metadata=get_metadata(),
            **conf_args,
            **options
        )

    with connectable.connect() as connection:
        if connection.dialect.name == "postgresql":
            run_on_postgresql(connection, configure)
        else:
            run_on_sqlite(connection, configure)


def run_on_sqlite(connection, configure):
    """All the migrations in one transaction that holds the write lock from the start.

    Alembic's default on SQLite is a transaction per migration, begun deferred:
    a second ``db upgrade`` running at the same time read the revision, then
    failed at its first write ("database is locked"), or ran a migration the
    first had just run. Holding the lock (BEGIN IMMEDIATE) from the revision's
    read on, the second waits (SQLite's busy timeout) and finds nothing to do;
    and an upgrade that fails midway leaves the database at the revision it
    started from.
    """
    connection = connection.execution_options(**{SQLITE_WRITE_OPTION: True})
    configure(connection, transactional_ddl=True)
    with sqlite_foreign_keys_off(connection), context.begin_transaction():
        context.run_migrations()


def run_on_postgresql(connection, configure):
    """One ``db upgrade`` at a time, each lock waited for briefly, tried again, then given up.

    A migration's ALTER TABLE waiting for a lock (a worker's transaction, a session
    idle in one) makes every later query on that table wait behind it, so waiting
    without end stalled the whole service without end. Each try waits at most
    ``lock_timeout`` seconds (``-x lock_timeout=S``, 0 for no limit) per lock; all the
    migrations are one transaction, so a try that gives up changes nothing, and
    the next comes after a pause that doubles (``-x lock_tries=N`` tries in all).
    """
    lock_timeout, tries = lock_settings()
    # The app's statement timeout guards queue work; building an index
    # over a large table may rightly take longer.
    connection.exec_driver_sql("SET statement_timeout = 0")
    with one_upgrade_at_a_time(connection):
        connection.exec_driver_sql(f"SET lock_timeout = '{round(lock_timeout * 1000)}ms'")
        connection.commit()
        for attempt in range(1, tries + 1):
            try:
                configure(connection)
                with context.begin_transaction():
                    context.run_migrations()
                return
            except OperationalError as error:
                if getattr(error.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                    raise
                waiting = first_line(error.statement)
            if attempt < tries:
                pause = lock_timeout * 2 ** (attempt - 1)
                logger.warning(
                    "Waited %s s for a lock (%s); nothing changed, trying again in %s s",
                    lock_timeout, waiting, pause,
                )
                time.sleep(pause)
        raise LockWaitGivenUp(
            f"db upgrade gave up waiting for a lock: {tries} tries of {lock_timeout} s each,"
            f" and another session still holds what this statement needs: {waiting}."
            f" Nothing was changed: the database is still at revision"
            f" {current_revision(connection)}. End the long transaction (pg_stat_activity:"
            " state 'idle in transaction', an old xact_start) and run db upgrade again;"
            " -x lock_timeout=SECONDS waits longer (0: for as long as it takes)."
        )


class LockWaitGivenUp(click.ClickException):
    """The database is busy: one line on stderr and exit 3, as for an outage."""

    exit_code = OUTAGE_EXIT_CODE


def lock_settings():
    """``-x lock_timeout=SECONDS`` and ``-x lock_tries=N``, checked."""
    arguments = context.get_x_argument(as_dictionary=True)
    try:
        lock_timeout = float(arguments.get("lock_timeout", LOCK_TIMEOUT_SECONDS))
        tries = int(arguments.get("lock_tries", LOCK_TRIES))
    except ValueError:
        lock_timeout = tries = -1
    if not (0 <= lock_timeout <= 86400 and 1 <= tries <= 100):
        raise click.UsageError(
            "-x lock_timeout must be from 0 to 86400 seconds and -x lock_tries"
            f" from 1 to 100, got {arguments}"
        )
    return lock_timeout, tries


@contextmanager
def one_upgrade_at_a_time(connection):
    """PostgreSQL's advisory lock, held by the session: another ``db upgrade`` waits for
    this one and then finds the database migrated (without it, both read the same
    revision, and the second failed on the first's work: 'column already exists')."""
    taken = connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({UPGRADE_LOCK_KEY})")
    if not taken.scalar():
        logger.info("Another db upgrade is running on this database; waiting for it to end")
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({UPGRADE_LOCK_KEY})")
    try:
        yield
    finally:
        connection.rollback()
        connection.exec_driver_sql(f"SELECT pg_advisory_unlock({UPGRADE_LOCK_KEY})")
        connection.commit()


def current_revision(connection):
    return MigrationContext.configure(connection).get_current_revision() or "base"


def first_line(statement):
    return " ".join((statement or "").split())[:120]


@contextmanager
def sqlite_foreign_keys_off(connection):
    """SQLite's procedure for rebuilding a table: foreign keys off while it runs.

    With them on, dropping the old copy of a table (batch mode) deletes, or
    cascades to, every row that refers to it. The pragma does nothing inside a
    transaction, so it is set on the driver's connection before Alembic begins
    one; a migration that rebuilds a table checks the keys itself
    (``PRAGMA foreign_key_check``) before it commits.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    driver_connection = connection.connection.driver_connection
    driver_connection.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        driver_connection.execute("PRAGMA foreign_keys = ON")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
