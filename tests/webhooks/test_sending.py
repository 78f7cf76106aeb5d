"""Sending in this process (the path the worker takes): bytes, headers and signatures checked by
an independent Standard Webhooks implementation; how each kind of answer is recorded; the
circuit breaker; the sweep; the outbox's transaction."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta

import pytest
import redis
import standardwebhooks
from django.db import transaction
from django.utils import timezone

from registry.models import AuditLog
from webhooks import delivery, fallback, services
from webhooks.models import Delivery, Event, WebhookEndpoint
from webhooks.outbox import record_events
from webhooks.signing import new_secret, signing_key

pytestmark = pytest.mark.django_db

MODEL = {
    "id": "sent",
    "name": "sent-model",
    "token_symbol": "SENT",
    "version": "1",
    "status": "registered",
    "run_id": "r1",
    "user_id": "owner",
}
DATA = {"metric_name": "accuracy", "baseline_value": 0.8, "current_value": 0.9}


@pytest.fixture
def endpoint_for(owner, fast_delivery):
    """`endpoint_for(receiver, **fields)`: an endpoint of `owner` subscribed to model events."""

    def make(target, **fields) -> tuple[WebhookEndpoint, str]:
        endpoint, secret = services.endpoint_create(
            actor=_owner_caller(owner),
            url=target.url,
            event_types=fields.pop("event_types", ["model_registered", "model_ready_to_deploy"]),
        )
        for name, value in fields.items():
            setattr(endpoint, name, value)
        endpoint.save()
        return endpoint, secret

    return make


def _owner_caller(user):
    from authkeys.principals import caller_from_user

    return caller_from_user(user)


def announce(event_types=("model_registered",)) -> list[Delivery]:
    with transaction.atomic():
        events = record_events(event_types=list(event_types), model=MODEL, data=DATA)
    return list(Delivery.objects.filter(event__in=events).select_related("event", "endpoint"))


def send(delivery_row: Delivery) -> Delivery:
    delivery.deliveries_send([delivery_row.pk])
    delivery_row.refresh_from_db()
    return delivery_row


def test_signed_bytes_verify_with_standard_webhooks_and_the_legacy_scheme(receiver, endpoint_for):
    target = receiver()
    _, secret = endpoint_for(target)
    (sent,) = announce()

    assert send(sent).status == Delivery.DELIVERED
    (request,) = target.wait_for(1)
    headers = request.headers
    verified = standardwebhooks.Webhook(secret).verify(request.body, headers)
    assert verified == sent.event.payload
    assert json.loads(request.body)["model"] == MODEL
    assert b" " not in request.body  # compact JSON
    assert headers["webhook-id"] == sent.webhook_id == headers["x-hokusai-idempotency-key"]
    assert headers["x-hokusai-event"] == "model_registered"
    legacy = hmac.new(signing_key(secret), request.body, hashlib.sha256).hexdigest()
    assert headers["x-hokusai-signature"] == f"sha256={legacy}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    (attempt,) = sent.attempts.all()
    assert (attempt.number, attempt.status_code, attempt.succeeded) == (1, 200, True)
    assert attempt.response_body == '{"ok": true}'


def test_a_tampered_body_or_another_secret_does_not_verify(receiver, endpoint_for):
    target = receiver()
    _, secret = endpoint_for(target)
    send(announce()[0])
    (request,) = target.wait_for(1)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(request.body + b" ", request.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(request.body, request.headers)


def test_after_rotation_both_secrets_sign_until_the_old_one_expires(receiver, endpoint_for, owner):
    target = receiver()
    endpoint, old_secret = endpoint_for(target)
    rotated = services.endpoint_rotate_secret(actor=_owner_caller(owner), endpoint=endpoint)
    send(announce()[0])
    (request,) = target.wait_for(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (old_secret, rotated):
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)

    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )
    send(announce()[0])
    request = target.wait_for(2)[1]
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    standardwebhooks.Webhook(rotated).verify(request.body, request.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(old_secret).verify(request.body, request.headers)


def test_a_failure_schedules_the_next_attempt_by_the_schedule(receiver, endpoint_for):
    target = receiver(script=["500"])
    endpoint_for(target)
    before = timezone.now()
    sent = send(announce()[0])

    assert sent.status == Delivery.PENDING
    assert (sent.attempt_count, sent.retry_step, sent.last_status_code) == (1, 1, 500)
    assert sent.last_error == "HTTP 500"
    assert sent.claimed_until is None
    # The first wait of the test schedule is 0.5 s, without jitter.
    assert timedelta(seconds=0.5) <= sent.next_attempt_at - before < timedelta(seconds=1.5)
    (attempt,) = sent.attempts.all()
    assert (attempt.succeeded, attempt.response_body) == (False, "receiver says no")


def test_retry_after_is_honoured(receiver, endpoint_for):
    target = receiver(script=["429"])
    endpoint_for(target)
    before = timezone.now()
    sent = send(announce()[0])
    # Retry-After: 1 outweighs the schedule's 0.5 s.
    assert sent.next_attempt_at - before >= timedelta(seconds=1)


def test_a_delivery_not_yet_due_or_claimed_elsewhere_is_not_sent(receiver, endpoint_for):
    target = receiver()
    endpoint_for(target)
    later, claimed = announce(["model_registered", "model_ready_to_deploy"])
    Delivery.objects.filter(pk=later.pk).update(
        next_attempt_at=timezone.now() + timedelta(minutes=1)
    )
    Delivery.objects.filter(pk=claimed.pk).update(
        claimed_until=timezone.now() + timedelta(minutes=1)
    )
    delivery.deliveries_send([later.pk, claimed.pk])
    assert target.received == []
    assert not Delivery.objects.exclude(status=Delivery.PENDING).exists()


def test_the_last_failure_makes_the_delivery_failed(receiver, endpoint_for):
    target = receiver(script=["500"] * 4)
    endpoint_for(target, consecutive_failures=0)
    sent = announce()[0]
    for _ in range(4):  # the first attempt and the 3 retries of the test schedule
        Delivery.objects.filter(pk=sent.pk).update(next_attempt_at=timezone.now())
        # Keep the breaker out of this test.
        WebhookEndpoint.objects.update(consecutive_failures=0)
        send(sent)
    assert (sent.status, sent.attempt_count, sent.next_attempt_at) == (Delivery.FAILED, 4, None)


def test_a_redirect_is_a_failure_and_is_not_followed(receiver, endpoint_for):
    elsewhere = receiver()
    target = receiver(script=[f"redirect:{elsewhere.url}"])
    endpoint_for(target)
    sent = send(announce()[0])
    assert (sent.status, sent.last_status_code) == (Delivery.PENDING, 302)
    assert "not followed" in sent.last_error
    assert len(target.received) == 1
    assert elsewhere.received == []


def test_a_receiver_too_slow_to_answer_is_a_timed_out_attempt(receiver, endpoint_for):
    target = receiver(script=["timeout"], hang_seconds=2.5)
    endpoint_for(target)
    started = time.monotonic()
    sent = send(announce()[0])
    assert time.monotonic() - started < 2.0  # WEBHOOK_TIMEOUT is 1 s here
    assert sent.last_status_code is None
    assert sent.last_error == "timed out after 1s"


def test_an_unreachable_receiver_is_a_failed_attempt(endpoint_for, receiver):
    target = receiver()
    endpoint_for(target)
    target.close()
    sent = send(announce()[0])
    assert sent.status == Delivery.PENDING
    assert sent.last_error.startswith("cannot connect to 127.0.0.1")


def test_410_disables_the_endpoint_and_tells_the_owner(
    receiver, endpoint_for, owner, django_capture_on_commit_callbacks
):
    gone = receiver(script=["410"])
    notices = receiver()
    endpoint, _ = endpoint_for(gone)
    watcher, _ = endpoint_for(notices, event_types=["endpoint_disabled"])
    signalled = []

    def listener(sender, endpoint, reason, **kwargs):
        signalled.append((endpoint.pk, reason))

    delivery.endpoint_disabled.connect(listener)
    try:
        (sent,) = announce()
        with django_capture_on_commit_callbacks(execute=True):
            send(sent)
    finally:
        delivery.endpoint_disabled.disconnect(listener)

    assert sent.status == Delivery.FAILED
    endpoint.refresh_from_db()
    assert not endpoint.is_active
    assert "410" in endpoint.disabled_reason
    audit = AuditLog.objects.get(action="webhook_endpoint.disabled")
    assert audit.target_id == str(endpoint.pk)
    notice = Delivery.objects.get(endpoint=watcher)
    assert notice.event.payload["endpoint"] == {"id": endpoint.pk, "url": endpoint.url}
    assert signalled == [(endpoint.pk, endpoint.disabled_reason)]
    # A disabled endpoint gets no new deliveries; its pending ones wait.
    assert announce() == []


def test_an_endpoint_failing_for_days_is_disabled(receiver, endpoint_for, settings):
    target = receiver(script=["500"])
    endpoint, _ = endpoint_for(
        target, failing_since=timezone.now() - timedelta(days=5, seconds=1), consecutive_failures=1
    )
    send(announce()[0])
    endpoint.refresh_from_db()
    assert not endpoint.is_active
    assert "5.0 days" in endpoint.disabled_reason


def test_the_breaker_opens_holds_probes_and_closes(receiver, endpoint_for):
    target = receiver(script=["500", "500", "500", "500"])
    endpoint, _ = endpoint_for(target)
    first, second, third, fourth, fifth = (announce()[0] for _ in range(5))
    for each in (first, second, third):
        send(each)
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 3  # WEBHOOK_BREAKER_FAILURES in the test settings
    assert endpoint.circuit_open_until > timezone.now()

    # Open: held back without an attempt, until the cooldown ends.
    held = send(fourth)
    assert (held.status, held.attempt_count) == (Delivery.PENDING, 0)
    assert held.next_attempt_at >= endpoint.circuit_open_until
    assert len(target.received) == 3

    # Half open: one probe goes; it fails, so the circuit opens again.
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(circuit_open_until=timezone.now())
    Delivery.objects.filter(pk__in=[fourth.pk, fifth.pk]).update(next_attempt_at=timezone.now())
    delivery.deliveries_send([fourth.pk, fifth.pk])
    assert len(target.received) == 4
    attempts = {
        row.pk: row.attempt_count for row in Delivery.objects.filter(pk__in=[fourth.pk, fifth.pk])
    }
    assert sorted(attempts.values()) == [0, 1]  # one probe; the other waits for its outcome
    endpoint.refresh_from_db()
    assert endpoint.circuit_open_until > timezone.now()

    # The next probe succeeds and closes it: deliveries flow again.
    waiting = next(pk for pk, count in attempts.items() if count == 0)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(circuit_open_until=timezone.now())
    Delivery.objects.filter(pk=waiting).update(next_attempt_at=timezone.now())
    assert send(Delivery.objects.get(pk=waiting)).status == Delivery.DELIVERED
    endpoint.refresh_from_db()
    assert (endpoint.consecutive_failures, endpoint.circuit_open_until) == (0, None)
    assert endpoint.failing_since is None


def test_the_sweep_enqueues_only_due_unclaimed_deliveries_whose_message_is_stale(
    receiver, endpoint_for
):
    endpoint_for(receiver())
    now = timezone.now()
    stale, fresh, claimed, later = (announce()[0] for _ in range(4))
    Delivery.objects.filter(pk=stale.pk).update(enqueued_at=now - timedelta(seconds=5))
    Delivery.objects.filter(pk=fresh.pk).update(enqueued_at=now)
    Delivery.objects.filter(pk=claimed.pk).update(
        enqueued_at=None, claimed_until=now + timedelta(seconds=30)
    )
    Delivery.objects.filter(pk=later.pk).update(
        enqueued_at=None, next_attempt_at=now + timedelta(minutes=5)
    )
    assert delivery.deliveries_requeue_due() == 1
    stale.refresh_from_db()
    assert stale.enqueued_at > now


def test_a_rolled_back_change_leaves_no_event_and_no_delivery(receiver, endpoint_for):
    endpoint_for(receiver())

    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned), transaction.atomic():
        record_events(event_types=["model_registered"], model=MODEL, data=DATA)
        raise Abandoned
    assert not Event.objects.exists()
    assert not Delivery.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_events_outside_a_transaction_are_refused():
    with pytest.raises(RuntimeError):
        record_events(event_types=["model_registered"], model=MODEL, data=DATA)


def test_webhook_url_from_settings_gets_model_events_signed_with_its_secret(
    receiver, settings, fast_delivery
):
    target = receiver()
    settings.WEBHOOK_URL = target.url
    settings.WEBHOOK_SECRET = "the-original-shared-secret"
    (sent,) = announce()
    assert sent.endpoint.from_settings
    send(sent)
    (request,) = target.wait_for(1)
    expected = hmac.new(b"the-original-shared-secret", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-hokusai-signature"] == f"sha256={expected}"

    settings.WEBHOOK_URL = ""
    assert announce() == []


def test_redis_fallback_pushes_and_publishes_the_original_envelope(settings):
    settings.ENABLE_REDIS_FALLBACK = True
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(fallback.QUEUE)
    subscription = client.pubsub(ignore_subscribe_messages=True)
    subscription.subscribe(fallback.CHANNEL)
    with transaction.atomic():
        record_events(
            event_types=["model_registered", "model_ready_to_deploy"], model=MODEL, data=DATA
        )
    # on_commit callbacks do not run in these (rolled back) tests: publish as commit would.
    fallback.publish(list(Event.objects.order_by("id")))

    queued = [json.loads(item) for item in client.lrange(fallback.QUEUE, 0, -1)]
    assert [item["message_type"] for item in queued] == [
        "model_ready_to_deploy",
        "model_registered",
    ]
    envelope = queued[0]
    assert set(envelope) == {
        "message_id",
        "message_type",
        "payload",
        "timestamp",
        "retry_count",
        "max_retries",
    }
    assert envelope["payload"]["model_id"] == "sent-model/1/SENT"
    assert envelope["payload"]["current_value"] == 0.9
    published = []
    deadline = time.monotonic() + 5
    while len(published) < 2 and time.monotonic() < deadline:
        message = subscription.get_message(timeout=0.5)
        if message:
            published.append(json.loads(message["data"]))
    assert [item["message_id"] for item in published] == [item["message_id"] for item in queued][
        ::-1
    ]
    client.delete(fallback.QUEUE)
