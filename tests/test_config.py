"""Settings come from DOCQUEUE_* variables, DATABASE_URL, and the mapping given to create_app."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import pytest
from flask import Flask

from docqueue_app import create_app
from docqueue_app.config import ConfigError, load_config, normalize_database_url


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("DOCQUEUE_SECRET_KEY", "k")
    return monkeypatch


def test_defaults(clean_env):
    config = create_app().config
    assert config["SCHEDULER_ENABLED"] is True
    assert config["POLL_INTERVAL"] == 1.0
    assert (config["BATCH_SIZE"], config["MAX_ATTEMPTS"]) == (10, 5)
    assert (config["RETRY_BASE_SECONDS"], config["RETRY_MAX_SECONDS"]) == (10, 3600)
    assert (config["LEASE_SECONDS"], config["MAX_UPLOAD_MB"]) == (300, 50)
    assert config["CRON_SECRET"] is None and config["API_TOKEN"] is None
    assert config["PROCESSOR"] == "docqueue_app.processing:extract"
    assert config["PROCESS_ISOLATION"] == "subprocess"
    assert (config["PROCESS_MEMORY_MB"], config["PROCESS_TIMEOUT_SECONDS"]) == (1024, 300)
    assert config["RETENTION_DAYS"] == 30


def test_environment_values_parse_like_flask(clean_env):
    clean_env.setenv("DOCQUEUE_POLL_INTERVAL", "1.5")
    clean_env.setenv("DOCQUEUE_SCHEDULER_ENABLED", "false")
    clean_env.setenv("DOCQUEUE_BATCH_SIZE", "25")
    config = create_app().config
    assert config["POLL_INTERVAL"] == 1.5
    assert config["SCHEDULER_ENABLED"] is False
    assert config["BATCH_SIZE"] == 25


def test_secrets_stay_strings(clean_env):
    clean_env.setenv("DOCQUEUE_CRON_SECRET", "123")
    clean_env.setenv("DOCQUEUE_API_TOKEN", "true")
    clean_env.setenv("DOCQUEUE_ADMIN_PASSWORD", '"quoted"')
    config = create_app().config
    assert config["CRON_SECRET"] == "123"
    assert config["API_TOKEN"] == "true"
    assert config["ADMIN_PASSWORD"] == '"quoted"'


def test_the_mapping_overrides_the_environment(clean_env):
    clean_env.setenv("DOCQUEUE_BATCH_SIZE", "25")
    assert create_app({"BATCH_SIZE": 3}).config["BATCH_SIZE"] == 3


def test_an_unknown_isolation_mode_is_refused(clean_env):
    with pytest.raises(ValueError, match="PROCESS_ISOLATION"):
        create_app({"PROCESS_ISOLATION": "docker"})


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u@h:5432/d",
        "postgresql://u@h:5432/d",
        "postgresql+psycopg://u@h:5432/d",
    ],
)
def test_every_postgresql_spelling_uses_psycopg3(url):
    assert normalize_database_url(url) == "postgresql+psycopg://u@h:5432/d"


def test_default_database_is_sqlite_in_the_instance_folder(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DOCQUEUE_SECRET_KEY", "k")
    app = create_app()
    assert app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")
    assert app.config["SQLALCHEMY_DATABASE_URI"].endswith("instance/docqueue.db")


# What each setting must be, as the error names it; "{}" stands for the value refused.
NUMBER_OF_SECONDS = "a number > 0 and <= 86400"
POLL_SECONDS = "a number >= 0.01 and <= 86400"
DELAY_SECONDS = "a number >= 0 and <= 86400"
COUNT = "a whole number >= 1 and <= 2147483647"
FLAG = "true or false"

BAD_SETTINGS = [
    ("DOCQUEUE_POLL_INTERVAL", "abc", POLL_SECONDS),
    ("DOCQUEUE_POLL_INTERVAL", "null", POLL_SECONDS),
    ("DOCQUEUE_POLL_INTERVAL", "1e10", POLL_SECONDS),
    ("DOCQUEUE_POLL_INTERVAL", "Infinity", POLL_SECONDS),
    ("DOCQUEUE_POLL_INTERVAL", "NaN", POLL_SECONDS),
    ("DOCQUEUE_POLL_INTERVAL", "true", POLL_SECONDS),
    ("DOCQUEUE_BATCH_SIZE", "abc", COUNT),
    ("DOCQUEUE_BATCH_SIZE", "[1]", COUNT),
    ("DOCQUEUE_BATCH_SIZE", "1.5", COUNT),
    ("DOCQUEUE_BATCH_SIZE", "99999999999999999999", COUNT),
    ("DOCQUEUE_CONCURRENCY", "0", "a whole number >= 1 and <= 1024"),
    ("DOCQUEUE_MAX_ATTEMPTS", "0", COUNT),
    ("DOCQUEUE_MAX_ATTEMPTS", "2.9", COUNT),
    ("DOCQUEUE_RETRY_BASE_SECONDS", "abc", DELAY_SECONDS),
    ("DOCQUEUE_RETRY_MAX_SECONDS", "-1", DELAY_SECONDS),
    ("DOCQUEUE_LEASE_SECONDS", "-1", NUMBER_OF_SECONDS),
    ("DOCQUEUE_MAX_UPLOAD_MB", "abc", "a number > 0 and <= 900"),
    ("DOCQUEUE_MAX_UPLOAD_MB", "-1", "a number > 0 and <= 900"),
    ("DOCQUEUE_PROCESSOR", "noColon", "module:callable"),
    ("DOCQUEUE_PROCESSOR", "a-module:thing", "module:callable"),
    ("DOCQUEUE_PROCESSOR", "module:", "module:callable"),
    ("DOCQUEUE_PROCESS_ISOLATION", "bogus", "one of subprocess, none"),
    ("DOCQUEUE_PROCESS_MEMORY_MB", "0", "a whole number >= 1 and <= 1048576"),
    ("DOCQUEUE_PROCESS_MEMORY_MB", "-1", "a whole number >= 1 and <= 1048576"),
    ("DOCQUEUE_PROCESS_TIMEOUT_SECONDS", "0", NUMBER_OF_SECONDS),
    ("DOCQUEUE_RETENTION_DAYS", "-5", "a whole number >= 1 and <= 36500"),
    ("DOCQUEUE_RETENTION_DAYS", "0", "a whole number >= 1 and <= 36500"),
    ("DOCQUEUE_RETENTION_DAYS", "1000000", "a whole number >= 1 and <= 36500"),
    ("DOCQUEUE_OCR", "bogus", "one of auto, off"),
    ("DOCQUEUE_WEBHOOK_URL", "notaurl", "an http or https URL"),
    ("DOCQUEUE_WEBHOOK_URL", "ftp://example.com/hook", "an http or https URL"),
    ("DOCQUEUE_WEBHOOK_MAX_ATTEMPTS", "0", COUNT),
    ("DOCQUEUE_WEBHOOK_TIMEOUT_SECONDS", "abc", NUMBER_OF_SECONDS),
    ("DOCQUEUE_SCHEDULER_ENABLED", "maybe", FLAG),
    ("DOCQUEUE_WEBHOOK_ALLOW_PRIVATE", "maybe", FLAG),
    ("DOCQUEUE_WEBHOOK_ALLOW_PRIVATE", "2", FLAG),
]


@pytest.mark.parametrize(("variable", "value", "expected"), BAD_SETTINGS)
def test_a_bad_setting_is_refused_naming_the_variable_value_and_expectation(
    clean_env, variable, value, expected
):
    clean_env.setenv(variable, value)
    with pytest.raises(ValueError) as refused:
        create_app()
    assert str(refused.value) == f"{variable} must be {expected}, got {value!r}"


def test_a_bad_database_url_is_refused_without_showing_its_password(clean_env):
    clean_env.setenv("DATABASE_URL", "mysql://user:hunter2@db.example/docqueue")
    with pytest.raises(ValueError) as refused:
        create_app()
    message = str(refused.value)
    assert message.startswith("DATABASE_URL must be a sqlite:// or postgresql:// URL, got 'mysql")
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "url", ["postgresql://user:hunter2@db.example:54x2/docqueue", "sqlite:relative.db"]
)
def test_a_database_url_that_does_not_parse_is_refused_in_one_line(clean_env, url):
    # A port that is not a number, or 'sqlite:' without its slashes, was a traceback
    # (ValueError, ArgumentError) from every command.
    clean_env.setenv("DATABASE_URL", url)
    with pytest.raises(ConfigError) as refused:
        create_app()
    scheme = url.split(":", 1)[0]
    assert str(refused.value) == (
        f"DATABASE_URL must be a sqlite:// or postgresql:// URL, got '{scheme}:...'"
    )


def test_every_edge_of_a_range_and_every_boolean_spelling_is_accepted(clean_env):
    for variable, value in {
        "DOCQUEUE_POLL_INTERVAL": "86400",
        "DOCQUEUE_RETRY_BASE_SECONDS": "0",
        "DOCQUEUE_BATCH_SIZE": "2147483647",
        "DOCQUEUE_MAX_ATTEMPTS": "3.0",
        "DOCQUEUE_RETENTION_DAYS": "36500",
        "DOCQUEUE_MAX_UPLOAD_MB": "0.001",
        "DOCQUEUE_OCR": " OFF ",
        "DOCQUEUE_WEBHOOK_URL": "http://receiver_1:8000/hook?x=1",
        "DOCQUEUE_SCHEDULER_ENABLED": "off",
        "DOCQUEUE_WEBHOOK_ALLOW_PRIVATE": "1",
        "DOCQUEUE_PROCESSOR": "tests.processing.sample_processors:echo_text",
    }.items():
        clean_env.setenv(variable, value)
    config = create_app().config
    assert (config["POLL_INTERVAL"], config["BATCH_SIZE"], config["MAX_ATTEMPTS"]) == (
        86400,
        2147483647,
        3,
    )
    assert isinstance(config["MAX_ATTEMPTS"], int)
    assert (config["RETENTION_DAYS"], config["OCR"]) == (36500, "off")
    assert config["SCHEDULER_ENABLED"] is False and config["WEBHOOK_ALLOW_PRIVATE"] is True


def test_a_blank_secret_or_webhook_url_means_unset(clean_env):
    clean_env.setenv("DOCQUEUE_ADMIN_PASSWORD", "")
    clean_env.setenv("DOCQUEUE_WEBHOOK_URL", "")
    config = create_app().config
    assert config["ADMIN_PASSWORD"] is None and config["WEBHOOK_URL"] is None


@pytest.mark.parametrize("key", ["123", "true", "[1, 2]", '"quoted"'])
def test_a_secret_key_that_looks_like_json_stays_the_text_given(clean_env, key):
    # DOCQUEUE_SECRET_KEY=123 was read as the number 123: every page then failed
    # with 500 as it signed its CSRF token.
    clean_env.setenv("DOCQUEUE_SECRET_KEY", key)
    # The page's request would start the queue scheduler, left ticking for the rest of
    # the run (it then logged into a closed stream when pytest ended).
    clean_env.setenv("DOCQUEUE_SCHEDULER_ENABLED", "false")
    app = create_app()
    assert app.config["SECRET_KEY"] == key
    page = app.test_client().get("/")
    assert page.status_code == 200
    assert b'name="csrf_token"' in page.data


@contextmanager
def unwritable(folder: Path) -> Iterator[Path]:
    """``folder`` made unwritable for this user (immutable as root, whom modes do not stop)."""
    folder.mkdir(exist_ok=True)
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        yield folder
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def missing(folder: Path) -> AbstractContextManager[Path]:
    return nullcontext(folder)


@pytest.mark.parametrize(
    ("folder_made", "problem"),
    [
        (unwritable, "this user cannot write (SQLite writes its journal there)"),
        (missing, "does not exist"),
    ],
)
def test_a_sqlite_database_in_a_folder_it_cannot_use_is_refused(
    clean_env, tmp_path, folder_made, problem
):
    # SQLite writes its journal beside the database: every command then failed, and a
    # worker or the server with a PermissionError traceback (its wake socket's folder).
    with folder_made(tmp_path / "folder") as folder:
        clean_env.setenv("DATABASE_URL", f"sqlite:///{folder}/docqueue.db")
        with pytest.raises(ConfigError) as refused:
            create_app()
    assert str(refused.value) == (
        f"DATABASE_URL names a SQLite database in {folder}, a folder that {problem}"
    )


def test_an_instance_folder_that_cannot_hold_the_default_database_is_refused(clean_env, tmp_path):
    clean_env.delenv("DATABASE_URL")
    with unwritable(tmp_path / "instance") as folder, pytest.raises(ConfigError) as refused:
        load_config(Flask("docqueue_app", instance_path=str(folder)))
    assert str(refused.value) == (
        f"DATABASE_URL is unset and its database is in {folder}, a folder that this user "
        "cannot write (SQLite writes its journal there)"
    )


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "postgresql://u@h/d"])
def test_databases_without_a_folder_are_not_checked_for_one(clean_env, url):
    clean_env.setenv("DATABASE_URL", url)
    assert create_app().config["DATABASE_URL"] == url


def test_an_instance_folder_that_cannot_hold_the_secret_key_is_refused(clean_env, tmp_path):
    # Unset, the key is kept in the instance folder; a folder root made and a service
    # user runs in was a PermissionError traceback.
    clean_env.delenv("DOCQUEUE_SECRET_KEY")
    with unwritable(tmp_path / "instance") as folder:
        app = Flask("docqueue_app", instance_path=str(folder))
        with pytest.raises(ConfigError) as refused:
            load_config(app)
    assert str(refused.value).startswith(
        f"DOCQUEUE_SECRET_KEY is unset and {folder}/secret_key cannot be made ("
    )
    assert str(refused.value).endswith("): set DOCQUEUE_SECRET_KEY, or let this user write it")
