"""Fuzz `avfeat serve`'s `/api/*` routes from its own OpenAPI schema (schemathesis, in process
through the ASGI app, no network): no request, however odd, gets a 5xx, and every answer with a
documented status matches its schema. Seeded and small: a few examples per operation."""

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(index):
    from avfeat.index.serve.app import create_app
    from avfeat.index.serve.service import Service

    app = create_app(Service(index, device="cpu"))
    return schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex="^/api/")


@pytest.mark.slow
def test_api_routes_answer_every_request_without_a_5xx(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 6  # search, sync, locate, videos, a video, attention
    statuses: dict[str, list[int]] = {}  # what each operation answered: the fuzzer did send requests

    for operation in operations:
        @settings(max_examples=8, derandomize=True, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
        @given(case=operation.as_strategy())
        def fuzz(case):
            response = case.call_and_validate(checks=[not_a_server_error, response_schema_conformance, content_type_conformance])
            statuses.setdefault(operation.label, []).append(response.status_code)

        fuzz()
    assert len(statuses) == len(operations) and all(len(codes) >= 4 for codes in statuses.values()), statuses
    codes = [code for answered in statuses.values() for code in answered]
    assert any(code < 300 for code in codes) and any(400 <= code < 500 for code in codes), statuses
