"""The webhooks API: endpoints and deliveries a caller owns, through API keys and staff sessions.

Deliveries are made by webhooks.outbox.record_events, as a registration makes them. These tests
run in a transaction that never commits, so nothing is handed to Celery; the one real send is
the endpoint test, to a receiver started in the test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from authkeys.models import EthIdentity
from authkeys.principals import SYSTEM, Caller
from registry.models import AuditLog
from webhooks import services
from webhooks.models import Delivery, Event, WebhookEndpoint
from webhooks.outbox import record_events
from webhooks.selectors import circuit_state, deliveries_visible_to, endpoints_visible_to
from webhooks.signing import signing_key, standard_signature

pytestmark = pytest.mark.django_db

WEBHOOKS_URL = "/api/v1/webhooks"
DELIVERIES_URL = "/api/v1/deliveries"
# Nothing listens on the discard port: deliveries here are only recorded, never sent.
HOOK_URL = "http://127.0.0.1:9/hook"


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def code_of(response) -> str:
    assert response["Content-Type"] == "application/problem+json"
    return response.json()["code"]


@pytest.fixture(autouse=True)
def _private_receivers_allowed(settings):
    settings.HOKUSAI_WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def owner_key(owner, issue_key) -> str:
    return issue_key(owner, ["webhooks:manage"])[1]


@pytest.fixture
def outsider_key(outsider, issue_key) -> str:
    return issue_key(outsider, ["webhooks:manage"])[1]


def create(client, key: str, **fields) -> dict:
    body = {"url": HOOK_URL, "event_types": ["model_registered"], **fields}
    response = client.post(WEBHOOKS_URL, body, content_type="application/json", **bearer(key))
    assert response.status_code == 201, response.content
    return response.json()


def patch(client, key: str, endpoint_id: int, body):
    return client.patch(
        f"{WEBHOOKS_URL}/{endpoint_id}", body, content_type="application/json", **bearer(key)
    )


def record(*event_types: str) -> list[Event]:
    """Events about one model version, recorded as a registration records them."""
    with transaction.atomic():
        return record_events(
            event_types=list(event_types),
            model={"id": "demo", "name": "Demo", "token_symbol": "DEMO", "version": "1"},
            data={"metric_name": "accuracy", "baseline_value": 0.8, "current_value": 0.9},
        )


@pytest.fixture
def receiver() -> Iterator[SimpleNamespace]:
    """A real HTTP receiver on loopback that records each request and answers `status`."""
    state = SimpleNamespace(requests=[], status=200)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            state.requests.append(SimpleNamespace(path=self.path, headers=headers, body=body))
            answer = b"thanks" if state.status < 300 else b"receiver broke"
            self.send_response(state.status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/hook"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# --- creating -----------------------------------------------------------------------------------


def test_created_endpoint_shows_its_secret_once(client, owner, owner_key):
    created = create(client, owner_key, description="CI notifications")

    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert created["url"] == HOOK_URL
    assert created["event_types"] == ["model_registered"]
    assert created["description"] == "CI notifications"
    assert created["is_active"] is True
    assert created["owner"] == "owner"
    assert created["circuit"] == {
        "state": "closed",
        "consecutive_failures": 0,
        "open_until": None,
        "failing_since": None,
    }
    stored = WebhookEndpoint.objects.get(pk=created["id"])
    assert stored.secret == secret
    assert stored.owner_user == owner
    # Never again: the detail and the list show no secret.
    detail = client.get(f"{WEBHOOKS_URL}/{created['id']}", **bearer(owner_key))
    assert detail.status_code == 200
    assert "secret" not in detail.json()
    assert secret not in detail.content.decode()
    assert secret not in client.get(WEBHOOKS_URL, **bearer(owner_key)).content.decode()


def test_unknown_fields_are_ignored_so_a_client_cannot_choose_its_secret(client, owner_key):
    created = create(client, owner_key, secret="whsec_chosen", owner="someone-else")
    assert created["secret"] != "whsec_chosen"
    assert created["owner"] == "owner"


def test_a_private_receiver_is_refused_when_private_addresses_are_not_allowed(
    client, owner_key, settings
):
    settings.HOKUSAI_WEBHOOK_ALLOW_PRIVATE = False
    response = client.post(
        WEBHOOKS_URL,
        {"url": "http://127.0.0.1/", "event_types": ["model_registered"]},
        content_type="application/json",
        **bearer(owner_key),
    )
    assert response.status_code == 400
    assert code_of(response) == "validation_error"
    assert "loopback" in response.json()["errors"]["url"][0]
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": HOOK_URL, "event_types": ["model_deleted"]}, "event_types.0"),
        ({"url": HOOK_URL, "event_types": []}, "event_types"),
        ({"url": HOOK_URL, "event_types": "model_registered"}, "event_types"),
        ({"url": HOOK_URL, "event_types": [{"type": "model_registered"}]}, "event_types.0"),
        ({"event_types": ["model_registered"]}, "url"),
        ({"url": {"href": HOOK_URL}, "event_types": ["model_registered"]}, "url"),
        ({"url": "ftp://example.com/hook", "event_types": ["model_registered"]}, "url"),
        ({"url": HOOK_URL, "event_types": ["ping"]}, "event_types.0"),
        ({"url": HOOK_URL, "event_types": ["model_registered"], "description": "x" * 501}, None),
        (["model_registered"], "non_field_errors"),
    ],
    ids=[
        "unknown-event-type",
        "no-event-types",
        "event-types-not-a-list",
        "event-type-not-a-string",
        "no-url",
        "url-not-a-string",
        "url-not-http",
        "ping-is-not-subscribable",
        "description-too-long",
        "body-not-an-object",
    ],
)
def test_invalid_input_is_a_validation_error_naming_the_field(client, owner_key, body, field):
    response = client.post(WEBHOOKS_URL, body, content_type="application/json", **bearer(owner_key))
    assert response.status_code == 400
    assert code_of(response) == "validation_error"
    assert (field or "description") in response.json()["errors"]
    assert not WebhookEndpoint.objects.exists()


def test_malformed_json_is_400_in_the_error_shape(client, owner_key):
    response = client.post(
        WEBHOOKS_URL, '{"url": ', content_type="application/json", **bearer(owner_key)
    )
    assert response.status_code == 400
    assert code_of(response) == "malformed_body"


# --- who may do what ------------------------------------------------------------------------------


def test_a_key_without_webhooks_manage_is_403(client, owner, issue_key):
    _, key = issue_key(owner, ["models:read", "keys:manage"])
    response = client.get(WEBHOOKS_URL, **bearer(key))
    assert response.status_code == 403
    assert code_of(response) == "insufficient_scope"
    refused = client.post(
        WEBHOOKS_URL,
        {"url": HOOK_URL, "event_types": ["model_registered"]},
        content_type="application/json",
        **bearer(key),
    )
    assert refused.status_code == 403
    assert not WebhookEndpoint.objects.exists()


def test_no_credentials_is_401(client):
    response = client.get(WEBHOOKS_URL)
    assert response.status_code == 401
    assert code_of(response) == "authentication_required"


def test_another_owners_endpoint_and_deliveries_are_404(client, owner_key, outsider_key):
    endpoint = create(client, owner_key)
    record("model_registered")
    delivery = Delivery.objects.get(endpoint_id=endpoint["id"])
    delivery.status = Delivery.FAILED
    delivery.save()

    for method, url in [
        ("get", f"{WEBHOOKS_URL}/{endpoint['id']}"),
        ("patch", f"{WEBHOOKS_URL}/{endpoint['id']}"),
        ("delete", f"{WEBHOOKS_URL}/{endpoint['id']}"),
        ("post", f"{WEBHOOKS_URL}/{endpoint['id']}/rotate-secret"),
        ("post", f"{WEBHOOKS_URL}/{endpoint['id']}/test"),
        ("get", f"{WEBHOOKS_URL}/{endpoint['id']}/deliveries"),
        ("get", f"{DELIVERIES_URL}/{delivery.pk}"),
        ("post", f"{DELIVERIES_URL}/{delivery.pk}/redeliver"),
    ]:
        response = getattr(client, method)(
            url, {"is_active": False}, content_type="application/json", **bearer(outsider_key)
        )
        assert response.status_code == 404, (method, url)
        assert code_of(response) == "not_found"

    stored = WebhookEndpoint.objects.get(pk=endpoint["id"])
    assert stored.is_active
    assert stored.secret == endpoint["secret"]
    delivery.refresh_from_db()
    assert delivery.status == Delivery.FAILED
    listed = client.get(WEBHOOKS_URL, **bearer(outsider_key)).json()
    assert listed["count"] == 0
    assert listed["results"] == []


def test_staff_and_admin_callers_see_every_owners_endpoints(
    client, owner_key, outsider, staff, issue_key
):
    endpoint = create(client, owner_key)
    _, admin_key = issue_key(outsider, ["admin"])

    listed = client.get(WEBHOOKS_URL, **bearer(admin_key)).json()
    assert [item["id"] for item in listed["results"]] == [endpoint["id"]]

    client.force_login(staff)
    detail = client.get(f"{WEBHOOKS_URL}/{endpoint['id']}")
    assert detail.status_code == 200
    assert detail.json()["owner"] == "owner"


def test_a_wallet_sees_only_the_endpoints_and_deliveries_of_its_identity(owner):
    wallet = EthIdentity.objects.create(address="0x" + "ab" * 20, scopes=["webhooks:manage"])
    other = EthIdentity.objects.create(address="0x" + "cd" * 20, scopes=["webhooks:manage"])
    caller = Caller(
        kind="eth",
        label=wallet.address,
        scopes=frozenset({"webhooks:manage"}),
        identity_id=wallet.pk,
    )
    for owned in (
        {"owner_identity_id": wallet.pk},
        {"owner_identity_id": other.pk},
        {"owner_user_id": owner.pk},
    ):
        services.endpoint_create(
            actor=SYSTEM, url=HOOK_URL, event_types=["model_registered"], **owned
        )
    record("model_registered")

    (mine,) = endpoints_visible_to(caller)
    assert mine.owner_identity_id == wallet.pk
    assert [delivery.endpoint_id for delivery in deliveries_visible_to(caller)] == [mine.pk]


def test_an_id_beyond_the_database_range_is_404_not_500(client, owner_key):
    response = client.get(f"{WEBHOOKS_URL}/99999999999999999999999", **bearer(owner_key))
    assert response.status_code == 404
    assert code_of(response) == "not_found"


# --- listing --------------------------------------------------------------------------------------


def test_list_filters_by_is_active(client, owner_key):
    on = create(client, owner_key)
    off = create(client, owner_key)
    assert patch(client, owner_key, off["id"], {"is_active": False}).status_code == 200

    def ids(query: str) -> list[int]:
        response = client.get(f"{WEBHOOKS_URL}{query}", **bearer(owner_key))
        assert response.status_code == 200
        return [item["id"] for item in response.json()["results"]]

    assert ids("") == [off["id"], on["id"]]
    assert ids("?is_active=true") == [on["id"]]
    assert ids("?is_active=false") == [off["id"]]
    bad = client.get(f"{WEBHOOKS_URL}?is_active=maybe", **bearer(owner_key))
    assert bad.status_code == 400
    assert "is_active" in bad.json()["errors"]


def test_list_is_paginated(client, owner_key):
    for _ in range(3):
        create(client, owner_key)
    page = client.get(f"{WEBHOOKS_URL}?page_size=2", **bearer(owner_key)).json()
    assert page["count"] == 3
    assert len(page["results"]) == 2
    assert page["next"] is not None


def test_the_circuit_state_follows_the_breaker(client, owner_key, settings):
    settings.WEBHOOK_BREAKER_FAILURES = 3
    endpoint = create(client, owner_key)
    now = timezone.now()

    def state() -> dict:
        return client.get(f"{WEBHOOKS_URL}/{endpoint['id']}", **bearer(owner_key)).json()["circuit"]

    WebhookEndpoint.objects.filter(pk=endpoint["id"]).update(
        consecutive_failures=3, failing_since=now, circuit_open_until=now + timedelta(minutes=1)
    )
    assert state()["state"] == "open"
    assert state()["consecutive_failures"] == 3
    assert state()["open_until"] is not None

    WebhookEndpoint.objects.filter(pk=endpoint["id"]).update(
        circuit_open_until=now - timedelta(seconds=1)
    )
    assert state()["state"] == "half_open"

    WebhookEndpoint.objects.filter(pk=endpoint["id"]).update(consecutive_failures=2)
    assert state()["state"] == "closed"


def test_circuit_state_without_an_open_until_is_half_open_like_the_sender_treats_it(settings):
    settings.WEBHOOK_BREAKER_FAILURES = 2
    now = timezone.now()
    endpoint = WebhookEndpoint(consecutive_failures=2, circuit_open_until=None)
    assert circuit_state(endpoint, now) == "half_open"
    endpoint.circuit_open_until = now
    assert circuit_state(endpoint, now) == "half_open"
    endpoint.circuit_open_until = now + timedelta(microseconds=1)
    assert circuit_state(endpoint, now) == "open"
    endpoint.consecutive_failures = 1
    assert circuit_state(endpoint, now) == "closed"


# --- changing -----------------------------------------------------------------------------------


def test_patch_changes_the_endpoint_and_audits_each_change(client, owner_key):
    endpoint = create(client, owner_key)
    new_url = "http://127.0.0.1:9/other-hook"

    response = patch(
        client,
        owner_key,
        endpoint["id"],
        {
            "url": new_url,
            "description": "deploys",
            "event_types": ["model_ready_to_deploy", "model_registered", "model_registered"],
        },
    )

    body = response.json()
    assert response.status_code == 200
    assert body["url"] == new_url
    assert body["description"] == "deploys"
    assert body["event_types"] == ["model_registered", "model_ready_to_deploy"]
    assert "secret" not in body
    entry = AuditLog.objects.get(action="webhook_endpoint.updated")
    assert entry.target_id == str(endpoint["id"])
    assert entry.actor_kind == "api_key"
    assert entry.details["changes"] == {
        "url": {"old": HOOK_URL, "new": new_url},
        "description": {"old": "", "new": "deploys"},
        "event_types": {
            "old": ["model_registered"],
            "new": ["model_registered", "model_ready_to_deploy"],
        },
    }
    assert endpoint["secret"] not in str(list(AuditLog.objects.values()))


def test_patch_with_nothing_new_writes_no_audit_entry(client, owner_key):
    endpoint = create(client, owner_key)
    response = patch(client, owner_key, endpoint["id"], {"description": ""})
    assert response.status_code == 200
    assert not AuditLog.objects.filter(action="webhook_endpoint.updated").exists()


def test_patch_refuses_a_private_url_when_private_addresses_are_not_allowed(
    client, owner_key, settings
):
    endpoint = create(client, owner_key)
    settings.HOKUSAI_WEBHOOK_ALLOW_PRIVATE = False
    response = patch(client, owner_key, endpoint["id"], {"url": "http://10.0.0.5/hook"})
    assert response.status_code == 400
    assert "url" in response.json()["errors"]
    assert WebhookEndpoint.objects.get(pk=endpoint["id"]).url == HOOK_URL


@pytest.mark.parametrize(
    "body",
    [{"is_active": "perhaps"}, {"event_types": []}, {"url": ""}, ["is_active"]],
    ids=["not-a-boolean", "no-event-types", "empty-url", "not-an-object"],
)
def test_patch_with_wrong_types_is_400(client, owner_key, body):
    endpoint = create(client, owner_key)
    response = patch(client, owner_key, endpoint["id"], body)
    assert response.status_code == 400
    assert code_of(response) == "validation_error"


def test_turning_an_endpoint_off_disables_it_with_a_reason_and_on_enables_it(client, owner_key):
    endpoint = create(client, owner_key)

    off = patch(client, owner_key, endpoint["id"], {"is_active": False}).json()
    assert off["is_active"] is False
    assert off["disabled_reason"].startswith("Disabled by ")

    on = patch(client, owner_key, endpoint["id"], {"is_active": True}).json()
    assert on["is_active"] is True
    assert on["disabled_reason"] == ""
    actions = AuditLog.objects.filter(target_id=str(endpoint["id"])).order_by("id")
    assert [entry.action for entry in actions] == [
        "webhook_endpoint.created",
        "webhook_endpoint.disabled",
        "webhook_endpoint.enabled",
    ]


def test_rotation_returns_a_new_secret_and_keeps_the_old_one_for_a_day(client, owner_key):
    endpoint = create(client, owner_key)
    old_secret = endpoint["secret"]

    response = client.post(f"{WEBHOOKS_URL}/{endpoint['id']}/rotate-secret", **bearer(owner_key))

    body = response.json()
    assert response.status_code == 200
    assert body["id"] == endpoint["id"]
    assert body["secret"].startswith("whsec_")
    assert body["secret"] != old_secret
    stored = WebhookEndpoint.objects.get(pk=endpoint["id"])
    assert stored.secret == body["secret"]
    assert stored.previous_secret == old_secret
    valid_for = stored.previous_secret_expires_at - timezone.now()
    assert timedelta(hours=23, minutes=59) < valid_for <= timedelta(hours=24)
    assert body[
        "previous_secret_valid_until"
    ] == stored.previous_secret_expires_at.isoformat().replace("+00:00", "Z")
    assert AuditLog.objects.filter(action="webhook_endpoint.secret_rotated").exists()
    detail = client.get(f"{WEBHOOKS_URL}/{endpoint['id']}", **bearer(owner_key)).content.decode()
    assert body["secret"] not in detail
    assert old_secret not in detail


def test_delete_removes_the_endpoint_with_its_deliveries(client, owner_key):
    endpoint = create(client, owner_key)
    kept = create(client, owner_key)
    record("model_registered")
    assert Delivery.objects.filter(endpoint_id=endpoint["id"]).count() == 1

    response = client.delete(f"{WEBHOOKS_URL}/{endpoint['id']}", **bearer(owner_key))

    assert response.status_code == 204
    assert not WebhookEndpoint.objects.filter(pk=endpoint["id"]).exists()
    assert not Delivery.objects.filter(endpoint_id=endpoint["id"]).exists()
    # The other endpoint's delivery and the event itself stay.
    assert Delivery.objects.filter(endpoint_id=kept["id"]).count() == 1
    assert Event.objects.count() == 1
    assert AuditLog.objects.filter(
        action="webhook_endpoint.deleted", target_id=str(endpoint["id"])
    ).exists()
    gone = client.get(f"{WEBHOOKS_URL}/{endpoint['id']}", **bearer(owner_key))
    assert gone.status_code == 404


# --- deliveries -----------------------------------------------------------------------------------


def test_deliveries_list_filters_by_status_and_event_type(client, owner_key):
    endpoint = create(client, owner_key, event_types=["model_registered", "model_ready_to_deploy"])
    record("model_registered", "model_ready_to_deploy")
    record("model_registered")
    ready = Delivery.objects.get(event__event_type="model_ready_to_deploy")
    Delivery.objects.filter(pk=ready.pk).update(status=Delivery.FAILED, last_error="HTTP 500")
    url = f"{WEBHOOKS_URL}/{endpoint['id']}/deliveries"

    def listed(query: str = "") -> list[dict]:
        response = client.get(url + query, **bearer(owner_key))
        assert response.status_code == 200
        return response.json()["results"]

    everything = listed()
    assert len(everything) == 3
    assert all(item["endpoint_id"] == endpoint["id"] for item in everything)
    assert all(item["webhook_id"].startswith("msg_") for item in everything)
    assert "payload" not in everything[0] and "attempts" not in everything[0]
    (failed,) = listed("?status=failed")
    assert failed["id"] == ready.pk
    assert failed["event_type"] == "model_ready_to_deploy"
    assert failed["event_id"] == str(ready.event.event_id)
    assert failed["last_error"] == "HTTP 500"
    assert len(listed("?status=pending")) == 2
    assert len(listed("?event_type=model_registered")) == 2
    assert listed("?status=delivered") == []
    assert len(listed("?status=pending&event_type=model_registered")) == 2


@pytest.mark.parametrize(
    ("query", "field"),
    [("?status=lost", "status"), ("?event_type=model_deleted", "event_type")],
)
def test_deliveries_list_refuses_an_unknown_filter_value(client, owner_key, query, field):
    endpoint = create(client, owner_key)
    response = client.get(f"{WEBHOOKS_URL}/{endpoint['id']}/deliveries{query}", **bearer(owner_key))
    assert response.status_code == 400
    assert code_of(response) == "validation_error"
    assert field in response.json()["errors"]


def test_a_delivery_shows_its_event_and_attempts(client, owner_key):
    endpoint = create(client, owner_key)
    (event,) = record("model_registered")
    delivery = Delivery.objects.get(endpoint_id=endpoint["id"])

    response = client.get(f"{DELIVERIES_URL}/{delivery.pk}", **bearer(owner_key))

    body = response.json()
    assert response.status_code == 200
    assert body["webhook_id"] == delivery.webhook_id
    assert body["status"] == "pending"
    assert body["attempts"] == []
    assert body["payload"] == event.payload
    assert body["payload"]["event_type"] == "model_registered"


def test_redelivering_a_pending_delivery_is_409(client, owner_key):
    endpoint = create(client, owner_key)
    record("model_registered")
    delivery = Delivery.objects.get(endpoint_id=endpoint["id"])

    response = client.post(f"{DELIVERIES_URL}/{delivery.pk}/redeliver", **bearer(owner_key))

    assert response.status_code == 409
    assert code_of(response) == "delivery_pending"


def test_a_failed_delivery_is_redelivered_with_the_same_webhook_id(client, owner_key):
    endpoint = create(client, owner_key)
    record("model_registered")
    delivery = Delivery.objects.get(endpoint_id=endpoint["id"])
    Delivery.objects.filter(pk=delivery.pk).update(
        status=Delivery.FAILED, retry_step=11, next_attempt_at=None
    )

    response = client.post(f"{DELIVERIES_URL}/{delivery.pk}/redeliver", **bearer(owner_key))

    body = response.json()
    assert response.status_code == 202
    assert body["id"] == delivery.pk
    assert body["status"] == "pending"
    assert body["webhook_id"] == delivery.webhook_id
    delivery.refresh_from_db()
    assert delivery.status == Delivery.PENDING
    assert delivery.retry_step == 0
    assert AuditLog.objects.filter(
        action="webhook_delivery.redelivered", target_id=str(delivery.pk)
    ).exists()


def test_redelivering_to_a_disabled_endpoint_is_409(client, owner_key):
    endpoint = create(client, owner_key)
    record("model_registered")
    Delivery.objects.filter(endpoint_id=endpoint["id"]).update(status=Delivery.FAILED)
    patch(client, owner_key, endpoint["id"], {"is_active": False})
    delivery = Delivery.objects.get(endpoint_id=endpoint["id"])

    response = client.post(f"{DELIVERIES_URL}/{delivery.pk}/redeliver", **bearer(owner_key))

    assert response.status_code == 409
    assert code_of(response) == "endpoint_disabled"


# --- the endpoint test --------------------------------------------------------------------------


def test_testing_an_endpoint_sends_a_signed_ping_to_the_receiver(client, owner_key, receiver):
    endpoint = create(client, owner_key, url=receiver.url)

    response = client.post(f"{WEBHOOKS_URL}/{endpoint['id']}/test", **bearer(owner_key))

    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "delivered"
    assert body["event_type"] == "ping"
    assert body["attempt_count"] == 1
    (attempt,) = body["attempts"]
    assert attempt["status_code"] == 200
    assert attempt["succeeded"] is True
    assert attempt["error"] == ""
    assert attempt["response_body"] == "thanks"
    assert attempt["duration_ms"] > 0
    (request,) = receiver.requests
    assert request.path == "/hook"
    assert request.headers["webhook-id"] == body["webhook_id"]
    assert request.headers["x-hokusai-event"] == "ping"
    expected = standard_signature(
        signing_key(endpoint["secret"]),
        webhook_id=body["webhook_id"],
        timestamp=int(request.headers["webhook-timestamp"]),
        body=request.body,
    )
    assert request.headers["webhook-signature"] == expected
    # The test delivery is listed with the endpoint's other deliveries.
    listed = client.get(
        f"{WEBHOOKS_URL}/{endpoint['id']}/deliveries?event_type=ping", **bearer(owner_key)
    ).json()
    assert [item["id"] for item in listed["results"]] == [body["id"]]


def test_a_ping_the_receiver_fails_is_reported_failed(client, owner_key, receiver):
    receiver.status = 500
    endpoint = create(client, owner_key, url=receiver.url)

    response = client.post(f"{WEBHOOKS_URL}/{endpoint['id']}/test", **bearer(owner_key))

    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "failed"
    assert body["last_status_code"] == 500
    (attempt,) = body["attempts"]
    assert attempt["status_code"] == 500
    assert attempt["succeeded"] is False
    assert attempt["error"] == "HTTP 500"
    assert attempt["response_body"] == "receiver broke"
    assert len(receiver.requests) == 1  # a ping is not retried


def test_testing_a_disabled_endpoint_is_409(client, owner_key, receiver):
    endpoint = create(client, owner_key, url=receiver.url)
    patch(client, owner_key, endpoint["id"], {"is_active": False})

    response = client.post(f"{WEBHOOKS_URL}/{endpoint['id']}/test", **bearer(owner_key))

    assert response.status_code == 409
    assert code_of(response) == "endpoint_disabled"
    assert receiver.requests == []


# --- the schema -----------------------------------------------------------------------------------


def test_the_schema_describes_the_webhook_routes_without_warnings(tmp_path):
    path = tmp_path / "schema.yaml"
    # --fail-on-warn: a route drf-spectacular cannot describe fails here, not in a client.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(path))
    schema = path.read_text()
    for route in (
        "/api/v1/webhooks:",
        "/api/v1/webhooks/{endpoint_id}:",
        "/api/v1/webhooks/{endpoint_id}/rotate-secret:",
        "/api/v1/webhooks/{endpoint_id}/test:",
        "/api/v1/webhooks/{endpoint_id}/deliveries:",
        "/api/v1/deliveries/{delivery_id}:",
        "/api/v1/deliveries/{delivery_id}/redeliver:",
    ):
        assert f"\n  {route}\n" in schema, route
