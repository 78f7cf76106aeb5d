import json
import logging

import pytest
from django.test import Client

from hokusai_site.request_id import RequestIdFilter

pytestmark = pytest.mark.urls("tests.hokusai_site.error_urls")

PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


def problem(response) -> dict:
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == response.status_code
    assert body["request_id"] == response["X-Request-ID"]
    return body


def test_unknown_api_route_is_a_404_problem(client):
    body = problem(client.get("/api/v1/nope"))
    assert body["code"] == "not_found"
    assert body["title"] == "Not Found"
    assert "errors" not in body


@pytest.mark.parametrize("debug", [True, False])
def test_unknown_route_stays_in_the_error_shape_with_and_without_debug(settings, debug):
    settings.DEBUG = debug
    body = problem(Client().post("/api/v1/models/nope/whatever", data={}))
    assert body["code"] == "not_found"


def test_wrong_method_is_a_405_problem(client):
    response = client.delete("/api/v1/echo")
    body = problem(response)
    assert response.status_code == 405
    assert body["code"] == "method_not_allowed"


def test_malformed_json_is_a_400_problem(client):
    response = client.post("/api/v1/echo", data="{not json", content_type="application/json")
    body = problem(response)
    assert response.status_code == 400
    assert body["code"] == "malformed_body"


def test_wrong_types_are_a_400_with_field_errors(client):
    response = client.post(
        "/api/v1/echo",
        data=json.dumps({"name": "far too long a name", "count": "many", "tags": [1, "x"]}),
        content_type="application/json",
    )
    body = problem(response)
    assert response.status_code == 400
    assert body["code"] == "validation_error"
    assert set(body["errors"]) == {"name", "count", "tags.1"}
    assert all(
        isinstance(message, str) for messages in body["errors"].values() for message in messages
    )


def test_unsupported_media_type_is_a_415_problem(client):
    response = client.post("/api/v1/echo", data="name=x", content_type="text/plain")
    assert problem(response)["code"] == "unsupported_media_type"
    assert response.status_code == 415


def test_body_over_the_route_limit_is_a_413_before_it_is_read(client):
    response = client.post(
        "/api/v1/echo", data=json.dumps({"name": "x" * 2000}), content_type="application/json"
    )
    body = problem(response)
    assert response.status_code == 413
    assert body["code"] == "request_too_large"
    assert "1024" in body["detail"]


def test_body_over_the_global_limit_is_a_413(client, settings):
    settings.MAX_REQUEST_BODY_BYTES = 100
    response = client.post("/api/v1/health", data="x" * 101, content_type="application/json")
    assert response.status_code == 413
    assert problem(response)["code"] == "request_too_large"


def test_non_numeric_content_length_is_a_400(client):
    response = client.post(
        "/api/v1/echo", data="{}", content_type="application/json", CONTENT_LENGTH="lots"
    )
    assert response.status_code == 400
    assert problem(response)["code"] == "bad_content_length"


def test_application_error_keeps_its_code_and_status(client):
    response = client.get("/api/v1/conflict")
    body = problem(response)
    assert response.status_code == 409
    assert body["code"] == "token_taken"
    assert body["detail"] == "Token HKS is owned by someone else."


def test_unauthenticated_call_is_a_problem(client):
    response = client.get("/api/v1/private")
    body = problem(response)
    assert response.status_code in (401, 403)
    assert body["code"] == "authentication_required"


def test_unexpected_exception_is_a_500_problem_without_internals():
    client = Client(raise_request_exception=False)
    response = client.get("/api/v1/broken")
    body = problem(response)
    assert response.status_code == 500
    assert body["code"] == "internal_error"
    assert "hunter2" not in response.content.decode()
    assert "Traceback" not in response.content.decode()


def test_request_id_is_generated_when_absent(client):
    response = client.get("/health")
    assert len(response["X-Request-ID"]) == 32


def test_client_request_id_is_echoed(client):
    response = client.get("/api/v1/nope", HTTP_X_REQUEST_ID="trace-abc.123")
    assert response["X-Request-ID"] == "trace-abc.123"
    assert response.json()["request_id"] == "trace-abc.123"


@pytest.mark.parametrize("unsafe", ["a" * 129, "line\nbreak", "spa ce", "<script>"])
def test_unsafe_client_request_id_is_replaced(client, unsafe):
    response = client.get("/health", HTTP_X_REQUEST_ID=unsafe)
    assert response["X-Request-ID"] != unsafe
    assert len(response["X-Request-ID"]) == 32


def test_request_id_appears_in_the_request_log_lines(client, caplog):
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO):
        response = client.get("/api/v1/nope", HTTP_X_REQUEST_ID="find-me-42")
    assert response.status_code == 404
    request_records = [r for r in caplog.records if r.name in ("hokusai.access", "django.request")]
    assert {r.name for r in request_records} == {"hokusai.access", "django.request"}
    assert all(r.request_id == "find-me-42" for r in request_records)
    access = next(r for r in request_records if r.name == "hokusai.access")
    assert (access.method, access.path, access.status) == ("GET", "/api/v1/nope", 404)


def test_page_size_is_capped(client):
    body = client.get("/api/v1/numbers?page_size=100000").json()
    assert body["count"] == 1000
    assert len(body["results"]) == 200


def test_default_page_size_and_next_link(client):
    body = client.get("/api/v1/numbers").json()
    assert len(body["results"]) == 50
    assert body["next"].endswith("/api/v1/numbers?page=2")


def test_page_out_of_range_is_a_404_problem(client):
    response = client.get("/api/v1/numbers?page=999")
    assert response.status_code == 404
    assert problem(response)["code"] == "not_found"


def test_browsable_api_is_off_without_debug(client):
    response = client.get("/api/v1/conflict", HTTP_ACCEPT="text/html")
    assert response["Content-Type"] == "application/problem+json"
