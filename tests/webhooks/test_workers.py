"""Deliveries by real Celery worker processes (beat embedded, for the sweep) to real receivers on
127.0.0.1, with the short schedule of FAST_DELIVERY_SETTINGS: retries, redelivery, a worker
killed mid-send, Redis down at commit, a flushed broker, and one failing receiver beside a
healthy one."""

from __future__ import annotations

import itertools
import statistics
import time

import pytest
import redis
from django.db import transaction

from authkeys.principals import caller_from_user
from webhooks import services
from webhooks.models import Delivery, WebhookEndpoint
from webhooks.outbox import record_events

from .conftest import run_in_django

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODEL = {
    "id": "live",
    "name": "live-model",
    "token_symbol": "LIVE",
    "version": "1",
    "status": "registered",
    "run_id": "r1",
    "user_id": "owner",
}
ANNOUNCE = (
    "from django.db import transaction\n"
    "from webhooks.outbox import record_events\n"
    "with transaction.atomic():\n"
    "    record_events(event_types=['model_registered'], model={model!r}, data={{}})\n"
)


def endpoint(owner, url: str) -> WebhookEndpoint:
    created, _ = services.endpoint_create(
        actor=caller_from_user(owner), url=url, event_types=["model_registered"]
    )
    return created


def announce() -> None:
    with transaction.atomic():
        record_events(event_types=["model_registered"], model=MODEL, data={})


def wait_for_status(status: str, *, count: int = 1, timeout: float = 30.0) -> list[Delivery]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(Delivery.objects.filter(status=status))
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    states = list(Delivery.objects.values_list("status", "attempt_count", "last_error"))
    raise TimeoutError(f"not {count} {status} within {timeout}s: {states}")


def test_three_failures_then_success_is_four_attempts_on_the_schedule(
    owner, receiver, webhook_worker
):
    target = receiver(script=["500", "503", "500"])
    endpoint(owner, target.url)
    # The breaker would hold the fourth attempt: keep it out of this test.
    webhook_worker(WEBHOOK_BREAKER_FAILURES="10")
    announce()

    requests = target.wait_for(4)
    (delivered,) = wait_for_status(Delivery.DELIVERED)
    assert delivered.attempt_count == 4
    assert {request.headers["webhook-id"] for request in requests} == {delivered.webhook_id}
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(requests)]
    # WEBHOOK_RETRY_SCHEDULE 0.5, 1, 1.5 s without jitter: never early, and not much late.
    for gap, planned in zip(gaps, (0.5, 1.0, 1.5), strict=True):
        assert planned - 0.05 <= gap < planned + 1.0, gaps
    attempts = list(delivered.attempts.values_list("number", "status_code", "succeeded"))
    assert attempts == [(1, 500, False), (2, 503, False), (3, 500, False), (4, 200, True)]


def test_all_attempts_fail_then_redelivery_delivers_with_the_same_webhook_id(
    owner, receiver, webhook_worker
):
    target = receiver(script=["500"] * 4)
    endpoint(owner, target.url)
    webhook_worker(WEBHOOK_BREAKER_FAILURES="10")
    announce()

    (failed,) = wait_for_status(Delivery.FAILED)
    assert failed.attempt_count == 4
    services.delivery_redeliver(actor=caller_from_user(owner), delivery_id=failed.pk)
    (delivered,) = wait_for_status(Delivery.DELIVERED)
    assert delivered.attempt_count == 5
    requests = target.wait_for(5)
    assert {request.headers["webhook-id"] for request in requests} == {failed.webhook_id}


def test_a_worker_killed_mid_send_is_made_good_after_restart(owner, receiver, webhook_worker):
    # The receiver takes 0.8 s to answer (WEBHOOK_TIMEOUT is 1 s): the kill lands mid-send.
    target = receiver(delay_seconds=0.8)
    endpoint(owner, target.url)
    worker = webhook_worker()
    announce()
    target.wait_for(1)
    worker.kill()
    (pending,) = Delivery.objects.all()
    assert pending.status == Delivery.PENDING
    assert pending.claimed_until is not None  # the dead worker's claim

    worker.start()
    # Once the claim runs out (2 x WEBHOOK_TIMEOUT + 5 s) the sweep hands it out again.
    (delivered,) = wait_for_status(Delivery.DELIVERED, timeout=40)
    assert len(target.wait_for(2)) >= 2
    assert {request.headers["webhook-id"] for request in target.received} == {delivered.webhook_id}
    assert delivered.attempts.filter(succeeded=True).count() == 1


def test_redis_down_when_the_event_commits_delays_but_does_not_lose_it(
    owner, receiver, webhook_worker, private_redis
):
    target = receiver()
    endpoint(owner, target.url)
    webhook_worker(REDIS_URL=private_redis.url)
    private_redis.stop()

    # The change commits; its Celery message cannot be sent.
    run_in_django(ANNOUNCE.format(model=MODEL), REDIS_URL=private_redis.url)
    (waiting,) = Delivery.objects.all()
    assert waiting.status == Delivery.PENDING
    assert waiting.enqueued_at is None  # left for the sweep

    private_redis.start()
    (delivered,) = wait_for_status(Delivery.DELIVERED, timeout=90)
    assert delivered.attempt_count == 1
    assert len(target.wait_for(1)) == 1


def test_a_flushed_broker_loses_nothing(owner, receiver, webhook_worker, private_redis):
    target = receiver()
    endpoint(owner, target.url)
    run_in_django(ANNOUNCE.format(model=MODEL), REDIS_URL=private_redis.url)
    client = redis.Redis.from_url(private_redis.url)
    assert client.llen("celery") == 1
    client.flushdb()

    webhook_worker(REDIS_URL=private_redis.url)
    (delivered,) = wait_for_status(Delivery.DELIVERED)
    assert delivered.attempt_count == 1
    assert len(target.wait_for(1)) == 1


def test_a_hanging_receiver_does_not_slow_a_healthy_one(owner, receiver, webhook_worker):
    healthy = receiver()
    hanging = receiver(script=["timeout"] * 20, hang_seconds=1.5)
    endpoint(owner, healthy.url)
    endpoint(owner, hanging.url)
    webhook_worker()
    latencies = []
    for _ in range(10):
        before = len(healthy.received)
        started = time.monotonic()
        announce()
        arrived = healthy.wait_for(before + 1)[-1]
        latencies.append(arrived.at - started)
    # Each event goes to both; the hanging receiver ties up a thread for 1 s each time.
    assert statistics.median(latencies) < 0.5, latencies
    assert len(hanging.received) >= 3
