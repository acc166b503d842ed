"""Settings come from DOCQUEUE_* variables, DATABASE_URL, and the mapping given to create_app."""

from __future__ import annotations

import pytest

from docqueue_app import create_app
from docqueue_app.config import normalize_database_url


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
