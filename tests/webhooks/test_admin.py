"""The operators' admin for webhooks: endpoints are added, changed, switched and deleted through
`webhooks.services` (so every change is audited), secrets are shown once, deliveries are
read-only but can be sent again, and the admin index counts what is failing.

Non-transactional tests: on_commit callbacks never run, so no Celery message is sent."""

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.sessions.models import Session
from django.db import transaction
from django.utils import timezone

from authkeys.principals import SYSTEM, Caller
from authkeys.scopes import MODELS_READ
from registry.models import AuditLog
from webhooks import services
from webhooks.models import Delivery, DeliveryAttempt, WebhookEndpoint
from webhooks.outbox import record_events

pytestmark = pytest.mark.django_db

ENDPOINTS_ADMIN = "/admin/webhooks/webhookendpoint/"
DELIVERIES_ADMIN = "/admin/webhooks/delivery/"
# Nothing listens on the discard port; these endpoints are never sent to.
QUIET_URL = "http://127.0.0.1:9/hook"
SECRET_IN_PAGE = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")


def make_endpoint(owner, url: str = QUIET_URL, **fields) -> WebhookEndpoint:
    endpoint, _ = services.endpoint_create(
        actor=SYSTEM, url=url, event_types=["model_registered"], owner_user_id=owner.pk
    )
    if fields:
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(**fields)
        endpoint.refresh_from_db()
    return endpoint


def make_delivery(endpoint: WebhookEndpoint, **fields) -> Delivery:
    """A model_registered delivery to `endpoint` (its only subscriber), changed by `fields`."""
    with transaction.atomic():
        (event,) = record_events(
            event_types=["model_registered"], model={"model_id": "m1"}, data={}
        )
    delivery = Delivery.objects.get(event=event, endpoint=endpoint)
    if fields:
        Delivery.objects.filter(pk=delivery.pk).update(**fields)
        delivery.refresh_from_db()
    return delivery


def add_form(**overrides) -> dict:
    data = {
        "url": QUIET_URL,
        "description": "ci hook",
        "event_types": ["model_registered", "endpoint_disabled"],
        "owner_user": "",
        "owner_identity": "",
    }
    data.update(overrides)
    return data


def run_action(client, admin_url: str, action: str, *rows, **form):
    return client.post(
        admin_url,
        {"action": action, "_selected_action": [str(row.pk) for row in rows], **form},
        follow=True,
    )


def shown_messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def shown_secret(response) -> str:
    found = SECRET_IN_PAGE.findall(response.content.decode())
    assert len(found) == 1, found
    return found[0]


def audit_actions(endpoint: WebhookEndpoint) -> list[str]:
    return list(
        AuditLog.objects.filter(target_type="webhook_endpoint", target_id=str(endpoint.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )


# --- adding and changing endpoints -------------------------------------------------------------


def test_an_added_endpoint_shows_its_secret_once_and_never_again(operator_client, owner):
    response = operator_client.post(f"{ENDPOINTS_ADMIN}add/", add_form(owner_user=str(owner.pk)))

    assert response.status_code == 200
    assert "will not be shown again" in response.content.decode()
    secret = shown_secret(response)
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secret == secret
    assert (endpoint.url, endpoint.description) == (QUIET_URL, "ci hook")
    assert endpoint.owner_user == owner
    assert endpoint.event_types == ["model_registered", "endpoint_disabled"]
    entry = AuditLog.objects.get(action="webhook_endpoint.created")
    assert (entry.target_id, entry.actor_label) == (str(endpoint.pk), "operator")

    change_page = operator_client.get(f"{ENDPOINTS_ADMIN}{endpoint.pk}/change/").content.decode()
    assert secret not in change_page
    assert f"whsec_…{secret[-4:]}" in change_page
    assert secret not in operator_client.get(ENDPOINTS_ADMIN).content.decode()
    stored = [
        *AuditLog.objects.values_list("details", flat=True),
        *LogEntry.objects.values_list("object_repr", "change_message"),
        *(session.get_decoded() for session in Session.objects.all()),
    ]
    assert secret not in str(stored)


def test_an_endpoint_for_an_ethereum_identity_can_be_added(operator_client, identity):
    response = operator_client.post(
        f"{ENDPOINTS_ADMIN}add/", add_form(owner_identity=str(identity.pk))
    )

    assert response.status_code == 200
    shown_secret(response)
    assert WebhookEndpoint.objects.get().owner_label == "wallet"


@pytest.mark.parametrize(
    ("owners", "field"),
    [({}, "owner_user"), ({"owner_user": "owner", "owner_identity": "identity"}, "owner_identity")],
    ids=["no-owner", "two-owners"],
)
def test_an_endpoint_has_exactly_one_owner(operator_client, owner, identity, owners, field):
    ids = {"owner": str(owner.pk), "identity": str(identity.pk)}
    response = operator_client.post(
        f"{ENDPOINTS_ADMIN}add/", add_form(**{name: ids[who] for name, who in owners.items()})
    )

    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not WebhookEndpoint.objects.exists()


def test_a_private_receiver_is_a_form_error_when_private_ones_are_refused(
    operator_client, owner, settings
):
    settings.HOKUSAI_WEBHOOK_ALLOW_PRIVATE = False

    response = operator_client.post(f"{ENDPOINTS_ADMIN}add/", add_form(owner_user=str(owner.pk)))

    assert response.status_code == 200
    assert "url" in response.context["adminform"].form.errors
    assert not WebhookEndpoint.objects.exists()


def test_editing_an_endpoint_goes_through_the_service_and_is_audited(operator_client, owner):
    endpoint = make_endpoint(owner)

    response = operator_client.post(
        f"{ENDPOINTS_ADMIN}{endpoint.pk}/change/",
        {
            "url": "http://127.0.0.1:9/other",
            "description": "renamed",
            "event_types": ["model_ready_to_deploy"],
        },
    )

    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.url, endpoint.description) == ("http://127.0.0.1:9/other", "renamed")
    assert endpoint.event_types == ["model_ready_to_deploy"]
    entry = AuditLog.objects.get(action="webhook_endpoint.updated")
    assert entry.actor_label == "operator"
    assert entry.details["changes"]["event_types"] == {
        "old": ["model_registered"],
        "new": ["model_ready_to_deploy"],
    }


# --- actions -----------------------------------------------------------------------------------


def test_disable_action_stops_the_endpoints_and_says_who_did_it(operator_client, owner):
    first, second = make_endpoint(owner), make_endpoint(owner)

    response = run_action(operator_client, ENDPOINTS_ADMIN, "disable_selected", first, second)

    assert shown_messages(response) == ["Disabled 2 endpoints."]
    for endpoint in (first, second):
        endpoint.refresh_from_db()
        assert not endpoint.is_active
        assert endpoint.disabled_reason == "Disabled by operator in the admin."
        assert audit_actions(endpoint) == ["webhook_endpoint.created", "webhook_endpoint.disabled"]
    entry = AuditLog.objects.filter(action="webhook_endpoint.disabled").first()
    assert entry.actor_label == "operator"
    assert entry.details["reason"] == "Disabled by operator in the admin."


def test_enable_action_reactivates_with_a_closed_circuit(operator_client, owner):
    endpoint = make_endpoint(
        owner,
        is_active=False,
        disabled_reason="The receiver answered 410 Gone.",
        consecutive_failures=7,
        failing_since=timezone.now() - timedelta(hours=1),
    )

    response = run_action(operator_client, ENDPOINTS_ADMIN, "enable_selected", endpoint)

    assert shown_messages(response) == ["Enabled 1 endpoint."]
    endpoint.refresh_from_db()
    assert (endpoint.is_active, endpoint.disabled_reason) == (True, "")
    assert (endpoint.consecutive_failures, endpoint.failing_since) == (0, None)
    assert audit_actions(endpoint)[-1] == "webhook_endpoint.enabled"


def test_reset_breaker_action_closes_an_open_circuit(operator_client, owner):
    endpoint = make_endpoint(
        owner,
        consecutive_failures=settings.WEBHOOK_BREAKER_FAILURES,
        failing_since=timezone.now() - timedelta(minutes=5),
        circuit_open_until=timezone.now() + timedelta(minutes=1),
    )
    held = make_delivery(endpoint, next_attempt_at=timezone.now() + timedelta(minutes=1))
    assert 'class="field-circuit">open<' in operator_client.get(ENDPOINTS_ADMIN).content.decode()

    response = run_action(operator_client, ENDPOINTS_ADMIN, "reset_breaker_selected", endpoint)

    assert "Closed the circuit of 1 endpoint" in shown_messages(response)[0]
    endpoint.refresh_from_db()
    assert (endpoint.consecutive_failures, endpoint.circuit_open_until) == (0, None)
    assert audit_actions(endpoint)[-1] == "webhook_endpoint.breaker_reset"
    held.refresh_from_db()
    assert held.next_attempt_at <= timezone.now()  # due now, for the sweep
    assert 'class="field-circuit">closed<' in response.content.decode()


def test_rotate_action_shows_the_new_secret_once_and_keeps_the_old_one_for_the_grace(
    operator_client, owner
):
    endpoint = make_endpoint(owner)
    old_secret = endpoint.secret

    response = run_action(operator_client, ENDPOINTS_ADMIN, "rotate_secret_selected", endpoint)

    assert response.status_code == 200
    assert "will not be shown again" in response.content.decode()
    new_secret = shown_secret(response)
    endpoint.refresh_from_db()
    assert (endpoint.secret, endpoint.previous_secret) == (new_secret, old_secret)
    assert endpoint.previous_secret_expires_at > timezone.now()
    assert audit_actions(endpoint)[-1] == "webhook_endpoint.secret_rotated"
    assert (
        new_secret
        not in operator_client.get(f"{ENDPOINTS_ADMIN}{endpoint.pk}/change/").content.decode()
    )


def test_rotate_action_takes_exactly_one_endpoint(operator_client, owner):
    first, second = make_endpoint(owner), make_endpoint(owner)

    response = run_action(operator_client, ENDPOINTS_ADMIN, "rotate_secret_selected", first, second)

    assert shown_messages(response) == ["Rotate one secret at a time: select exactly one."]
    assert not AuditLog.objects.filter(action="webhook_endpoint.secret_rotated").exists()


def test_test_ping_action_posts_a_signed_ping_and_reports_the_answer(
    operator_client, owner, receiver
):
    listening = receiver()
    endpoint = make_endpoint(owner, url=listening.url)

    response = run_action(operator_client, ENDPOINTS_ADMIN, "test_selected", endpoint)

    (message,) = shown_messages(response)
    assert message.startswith(f"{listening.url}: answered 200 in ")
    (request,) = listening.received
    assert request.path == "/hook"
    assert request.headers["webhook-signature"].startswith("v1,")
    assert request.headers["x-hokusai-event"] == "ping"
    ping = Delivery.objects.get(endpoint=endpoint, event__event_type="ping")
    assert (ping.status, ping.attempt_count) == (Delivery.DELIVERED, 1)


def test_test_ping_action_reports_a_failing_receiver(operator_client, owner, receiver):
    listening = receiver(script=["500"])
    endpoint = make_endpoint(owner, url=listening.url)

    response = run_action(operator_client, ENDPOINTS_ADMIN, "test_selected", endpoint)

    assert shown_messages(response) == [f"{listening.url}: failed (HTTP 500)."]
    assert len(listening.received) == 1
    ping = Delivery.objects.get(endpoint=endpoint, event__event_type="ping")
    assert ping.status == Delivery.FAILED


def test_test_ping_action_refuses_a_disabled_endpoint(operator_client, owner):
    endpoint = make_endpoint(owner, is_active=False)

    response = run_action(operator_client, ENDPOINTS_ADMIN, "test_selected", endpoint)

    assert shown_messages(response) == [
        f"{QUIET_URL}: The endpoint is disabled; enable it before testing it."
    ]
    assert not Delivery.objects.exists()


def test_deleting_an_endpoint_is_audited(operator_client, owner):
    one, two, three = make_endpoint(owner), make_endpoint(owner), make_endpoint(owner)
    make_delivery(one)

    confirm = operator_client.get(f"{ENDPOINTS_ADMIN}{one.pk}/delete/").content.decode()
    single = operator_client.post(f"{ENDPOINTS_ADMIN}{one.pk}/delete/", {"post": "yes"})
    bulk = run_action(operator_client, ENDPOINTS_ADMIN, "delete_selected", two, three, post="yes")

    assert "Deliveries: 1" in confirm  # counted, not listed
    assert single.status_code == 302
    assert bulk.status_code == 200
    assert not WebhookEndpoint.objects.exists()
    assert not Delivery.objects.exists()
    deleted = AuditLog.objects.filter(action="webhook_endpoint.deleted")
    assert {entry.target_id for entry in deleted} == {str(e.pk) for e in (one, two, three)}
    assert {entry.actor_label for entry in deleted} == {"operator"}


# --- deliveries --------------------------------------------------------------------------------


def test_delivery_list_filters_by_status_and_finds_a_webhook_id(operator_client, owner):
    endpoint = make_endpoint(owner)
    failed = make_delivery(endpoint, status=Delivery.FAILED, last_status_code=503)
    pending = make_delivery(endpoint)

    listed = operator_client.get(DELIVERIES_ADMIN).content.decode()
    only_failed = operator_client.get(DELIVERIES_ADMIN, {"status__exact": "failed"})
    found = operator_client.get(DELIVERIES_ADMIN, {"q": pending.webhook_id})

    assert failed.webhook_id in listed and pending.webhook_id in listed
    assert 'class="field-event_type">model_registered<' in listed
    assert pending.webhook_id not in only_failed.content.decode()
    assert failed.webhook_id not in found.content.decode()
    assert pending.webhook_id in found.content.decode()


def test_delivery_page_shows_its_attempts_in_order_and_cannot_be_edited(operator_client, owner):
    endpoint = make_endpoint(owner)
    delivery = make_delivery(endpoint, status=Delivery.FAILED, attempt_count=2)
    for number, code in ((2, 502), (1, 500)):
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=timezone.now(),
            duration_ms=12.5,
            status_code=code,
            response_body=f"body of attempt {number}",
            succeeded=False,
        )

    response = operator_client.get(f"{DELIVERIES_ADMIN}{delivery.pk}/change/")

    page = response.content.decode()
    assert response.status_code == 200
    assert page.index("body of attempt 1") < page.index("body of attempt 2")
    assert 'name="_save"' not in page
    assert operator_client.post(f"{DELIVERIES_ADMIN}{delivery.pk}/change/", {}).status_code == 403
    assert operator_client.get(f"{DELIVERIES_ADMIN}add/").status_code == 403


def test_redeliver_action_requeues_a_failed_delivery_and_refuses_a_pending_one(
    operator_client, owner
):
    endpoint = make_endpoint(owner)
    failed = make_delivery(
        endpoint, status=Delivery.FAILED, retry_step=12, attempt_count=12, next_attempt_at=None
    )
    pending = make_delivery(endpoint)

    response = run_action(operator_client, DELIVERIES_ADMIN, "redeliver_selected", failed, pending)

    assert sorted(shown_messages(response)) == [
        "Queued 1 delivery again.",
        f"{pending.webhook_id}: The delivery is still pending; it will be sent.",
    ]
    again = Delivery.objects.get(pk=failed.pk)
    assert (again.status, again.retry_step, again.webhook_id) == (
        Delivery.PENDING,
        0,
        failed.webhook_id,
    )
    entry = AuditLog.objects.get(action="webhook_delivery.redelivered")
    assert (entry.target_id, entry.actor_label) == (str(failed.pk), "operator")


# --- the admin index ---------------------------------------------------------------------------


def test_the_index_counts_failing_and_disabled_endpoints_and_failed_deliveries(
    operator_client, owner
):
    now = timezone.now()
    failures = settings.WEBHOOK_BREAKER_FAILURES
    opened = make_endpoint(
        owner, consecutive_failures=failures, circuit_open_until=now + timedelta(minutes=1)
    )
    half_open = make_endpoint(
        owner, consecutive_failures=failures, circuit_open_until=now - timedelta(seconds=1)
    )
    flaky = make_endpoint(owner, consecutive_failures=1)  # still closed
    make_endpoint(owner, is_active=False)
    for _ in range(2):
        make_delivery(flaky, status=Delivery.FAILED)
    make_delivery(flaky, status=Delivery.FAILED, updated_at=now - timedelta(hours=25))
    make_delivery(flaky)

    page = operator_client.get("/admin/").content.decode()
    failing = operator_client.get(ENDPOINTS_ADMIN, {"circuit": "failing"})

    summary = re.sub(r"<[^>]+>", "", page[page.index('id="webhook-summary"') :])
    summary = re.sub(r"\s+", " ", summary)
    assert "Webhooks: 2 endpoints failing (circuit open or half open), 1 disabled," in summary
    assert "2 deliveries failed in the last 24 h" in summary
    assert "Webhook endpoints" in page  # Django's app list is still there
    assert list(failing.context["cl"].result_list) == [half_open, opened]


# --- who may use it ----------------------------------------------------------------------------


@pytest.fixture
def staff_without_webhooks(monkeypatch):
    """Every staff session holds `admin` today; a session with less must not get these pages."""
    monkeypatch.setattr(
        "authkeys.admin.caller_from_user",
        lambda user: Caller(
            kind="user",
            label=user.get_username(),
            scopes=frozenset({MODELS_READ}),
            user_id=user.pk,
            is_staff=True,
        ),
    )


def test_staff_without_the_webhooks_scope_neither_see_nor_act(
    operator_client, owner, staff_without_webhooks
):
    endpoint = make_endpoint(owner)
    delivery = make_delivery(endpoint, status=Delivery.FAILED)

    index = operator_client.get("/admin/").content.decode()
    for url in (
        ENDPOINTS_ADMIN,
        f"{ENDPOINTS_ADMIN}add/",
        f"{ENDPOINTS_ADMIN}{endpoint.pk}/change/",
        DELIVERIES_ADMIN,
        f"{DELIVERIES_ADMIN}{delivery.pk}/change/",
    ):
        assert operator_client.get(url).status_code == 403, url
    disabling = operator_client.post(
        ENDPOINTS_ADMIN, {"action": "disable_selected", "_selected_action": [str(endpoint.pk)]}
    )
    redelivering = operator_client.post(
        DELIVERIES_ADMIN,
        {"action": "redeliver_selected", "_selected_action": [str(delivery.pk)]},
    )

    assert "webhook-summary" not in index
    assert "Webhook endpoints" not in index
    assert (disabling.status_code, redelivering.status_code) == (403, 403)
    endpoint.refresh_from_db()
    delivery.refresh_from_db()
    assert (endpoint.is_active, delivery.status) == (True, Delivery.FAILED)
    assert audit_actions(endpoint) == ["webhook_endpoint.created"]


@pytest.mark.parametrize("who", ["anonymous", "outsider"])
def test_only_staff_reach_these_pages(client, outsider, owner, who):
    endpoint = make_endpoint(owner)
    if who == "outsider":
        client.force_login(outsider)

    for url in (ENDPOINTS_ADMIN, f"{ENDPOINTS_ADMIN}{endpoint.pk}/change/", DELIVERIES_ADMIN):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url
    client.post(
        ENDPOINTS_ADMIN, {"action": "disable_selected", "_selected_action": [str(endpoint.pk)]}
    )

    endpoint.refresh_from_db()
    assert endpoint.is_active
