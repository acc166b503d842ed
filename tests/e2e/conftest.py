"""Fixtures of the end-to-end tests: a migrated database for a real server, on both back ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.pg_cluster import pg_cluster
from tests.e2e.server import migrated_env

__all__ = ["pg_cluster"]  # a fixture: a PostgreSQL cluster the test can stop and start


@pytest.fixture(params=["sqlite", "postgresql"])
def server_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgresql_clean")
    else:
        database_url = f"sqlite:///{tmp_path / 'docqueue.db'}"
    return migrated_env(database_url)
