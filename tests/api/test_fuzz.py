"""The API fuzzed from its own OpenAPI document (schemathesis), on both back ends.

Every operation of /api/openapi.json is a test of its own, on its own database,
fed valid and invalid input (parameters, JSON bodies, multipart uploads) with the
credentials its ``security`` names (left out or spoiled now and then). No answer
may be a 500, each must match its documented schema and content type, and every
error must have the JSON shape of SPEC §4.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from docqueue_app import create_app
from tests.api import run_queue
from tests.api.test_admin import basic_auth
from tests.conftest import BASE_CONFIG
from tests.helpers import upload

API_TOKEN = "fuzz-api-token"
CRON_SECRET = "fuzz-cron-secret"
ADMIN_PASSWORD = "fuzz-admin-password"
CREDENTIALS = {"API_TOKEN": API_TOKEN, "CRON_SECRET": CRON_SECRET, "ADMIN_PASSWORD": ADMIN_PASSWORD}
CONFIG = schemathesis.Config.from_dict(
    {
        "auth": {
            "openapi": {
                "apiToken": {"bearer": API_TOKEN},
                "adminLogin": {"username": "admin", "password": ADMIN_PASSWORD},
                "cronSecret": {"bearer": CRON_SECRET},
            }
        }
    }
)
# Per operation: valid input, invalid input and input about existing rows; in all
# about 20 s a back end on 2 cores.
# Derandomized, so a run in CI tries what the last run here tried.
FUZZ_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def load_schema(app: Flask) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app, config=CONFIG)


def _app_without_database() -> Flask:
    """Enough to serve the OpenAPI document, which needs no database."""
    return create_app({**BASE_CONFIG, "DATABASE_URL": "sqlite://", **CREDENTIALS})


OPERATIONS = [
    result.ok().label for result in load_schema(_app_without_database()).get_all_operations()
]


# Documents and queue items 1 to 3: completed, pending, cancelled.
SEEDED_IDS = (1, 2, 3)


@pytest.fixture
def fuzzed_app(make_app: Callable[..., Flask]) -> Flask:
    """An app with every credential set, and rows for each id of SEEDED_IDS."""
    app = make_app(**CREDENTIALS)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    upload(client, b"processed first", "first.txt", headers=headers)
    run_queue(app)
    upload(client, b"<h1>still pending</h1>", "second.html", headers=headers)
    upload(client, b"a,b\n1,2\n", "third.csv", headers=headers)
    cancelled = client.post(
        "/api/queue/items/3/cancel", headers=basic_auth("admin", ADMIN_PASSWORD)
    )
    assert cancelled.status_code == 200
    return app


def json_error_shape(ctx: schemathesis.CheckContext, response: Any, case: Any) -> bool | None:
    """Every error is JSON: ``{"code", "status", "message"}``, code the status code."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict), f"an error body that is not an object: {body!r}"
    missing = {"code", "status", "message"} - body.keys()
    assert not missing, f"an error without {sorted(missing)}: {body!r}"
    assert body["code"] == response.status_code, f"code {body['code']} in a {response.status_code}"
    assert isinstance(body["message"], str) and body["message"], f"no message: {body!r}"
    return True


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    json_error_shape,
]


def cases_of(operation: schemathesis.APIOperation) -> st.SearchStrategy[schemathesis.Case]:
    """Valid and invalid requests, and valid ones about rows that exist."""
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    id_names = [parameter.name for parameter in operation.path_parameters]
    if id_names:
        # A random id hardly ever names a row: the answers about one are fuzzed too.
        strategies.append(
            st.sampled_from(SEEDED_IDS).flatmap(
                lambda row: operation.as_strategy(path_parameters=dict.fromkeys(id_names, row))
            )
        )
    return st.one_of(strategies)


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_answers_any_input_as_documented(fuzzed_app: Flask, label: str) -> None:
    operation = load_schema(fuzzed_app).find_operation_by_label(label)
    assert operation is not None, f"{label} is no longer in the OpenAPI document"
    assert not operation.skipped_parameters, "schemathesis could not read every parameter"

    @given(case=cases_of(operation))
    @FUZZ_SETTINGS
    def answers_as_documented(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    answers_as_documented()


def expected_security(path: str) -> list[dict[str, list[str]]] | None:
    if path.startswith("/api/documents"):
        return [{"apiToken": []}]
    if path.startswith("/api/cron/"):
        return [{"cronSecret": []}]
    if path.startswith("/api/queue/") and path != "/api/queue/stats":
        return [{"adminLogin": []}]
    return None  # open: stats, health probes


def test_the_document_names_the_credentials_of_every_operation() -> None:
    spec = _app_without_database().test_client().get("/api/openapi.json").get_json()

    schemes = spec["components"]["securitySchemes"]
    assert {name: (scheme["type"], scheme["scheme"]) for name, scheme in schemes.items()} == {
        "apiToken": ("http", "bearer"),
        "adminLogin": ("http", "basic"),
        "cronSecret": ("http", "bearer"),
    }
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method != "parameters":
                assert operation.get("security") == expected_security(path), (method, path)
