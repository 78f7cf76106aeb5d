"""ENABLE_REDIS_FALLBACK: every event also goes onto the Redis list the original platform's
consumers read (`hokusai:model_ready_queue`, LPUSH, consumers RPOP) and out on its pub/sub
channel, in the original's envelope. Best effort beside the webhooks: a Redis failure is logged,
and the webhook deliveries, which Postgres holds, are unaffected."""

from __future__ import annotations

import json
import logging

import redis
from django.conf import settings

from webhooks.models import Event

logger = logging.getLogger(__name__)

QUEUE = "hokusai:model_ready_queue"
CHANNEL = f"{QUEUE}:pubsub"
# The original's retry budget, which its consumers read from the envelope.
MAX_RETRIES = 3


def envelope(event: Event) -> dict:
    body = event.payload
    return {
        "message_id": body["event_id"],
        "message_type": event.event_type,
        "payload": flat_payload(body),
        "timestamp": body["timestamp"],
        "retry_count": 0,
        "max_retries": MAX_RETRIES,
    }


def flat_payload(body: dict) -> dict:
    """The original's payload: the model's facts beside the event data, in its field names."""
    model = body.get("model")
    if model is None:
        return {key: value for key, value in body.items() if key not in ("event_type", "source")}
    return {
        "model_id": f"{model['name']}/{model['version']}/{model['token_symbol']}",
        "token_symbol": model["token_symbol"],
        "model_name": model["name"],
        "model_version": model["version"],
        "mlflow_run_id": model["run_id"],
        "status": model["status"],
        "user_id": model["user_id"],
        **body.get("data", {}),
    }


def publish(events: list[Event]) -> None:
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2
        )
        with client.pipeline(transaction=False) as pipeline:
            for event in events:
                message = json.dumps(envelope(event), separators=(",", ":"))
                pipeline.lpush(QUEUE, message)
                pipeline.publish(CHANNEL, message)
            pipeline.execute()
    except redis.RedisError:
        logger.warning(
            "could not publish %d event(s) to %s; webhooks still deliver them",
            len(events),
            QUEUE,
            exc_info=True,
        )
