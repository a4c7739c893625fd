"""Schemathesis over /api/openapi.json against the app: requests made from the schema, with
an API key, never meet a server error, and every answer (status, content type, body)
is one the schema documents."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gallery_data import add_image, user_id
from tests.support import Browserless, make_settings, migrated

EXAMPLES = 15  # per operation: enough to walk each one's fields, cheap enough for every CI run
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_path) -> FastAPI:
    from app.main import create_app

    # credits enough for every generation the fuzzer asks for; no cap on jobs at once
    settings = make_settings(
        tmp_path_factory.mktemp("fuzz") / "data",
        tiny_model_path,
        signup_grant_credits=10_000_000,
        max_active_jobs_per_user=0,
        api_key_requests_per_minute=0,  # the fuzzer's hundreds of calls in a few seconds
    )
    return create_app(migrated(settings))


@pytest.fixture(scope="module")
def api_auth(app) -> dict[str, str]:
    """The headers that authenticate the fuzzer's requests: an API key, as a script sends it."""
    from app.apikeys import service as apikeys
    from app.db import transaction

    c = Browserless(app)
    c.sign_up("fuzz@example.com")
    settings = app.state.settings
    add_image(settings, user_id(settings, "fuzz@example.com"), "a lighthouse at dusk")  # a gallery to read
    with transaction(settings) as session:
        _key, secret = apikeys.create(session, user_id(settings, "fuzz@example.com"), "fuzzer")
    return {"Authorization": f"Bearer {secret}"}


def test_the_api_answers_as_its_schema_says(app, api_auth, subtests):
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    for operation in operations:
        with subtests.test(operation=operation.label):
            fuzz(operation, api_auth)


def fuzz(operation, headers: dict[str, str]) -> None:
    """Call the operation with up to EXAMPLES requests made from its schema; check each answer."""

    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()
