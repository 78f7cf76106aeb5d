"""Signatures on deliveries: Standard Webhooks (`webhook-signature: v1,<base64>`) and, for
receivers of the original platform, `X-Hokusai-Signature: sha256=<hex>` over the body alone.

A `whsec_` secret's key is the base64 after the prefix (as Standard Webhooks libraries read it);
any other secret (WEBHOOK_SECRET of the original) is its UTF-8 bytes, so old receivers verify
with the secret they were given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    return secret.encode()


def standard_signature(key: bytes, *, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()


def legacy_signature(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.digest(key, body, hashlib.sha256).hex()


def signature_headers(
    keys: list[bytes], *, webhook_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """`keys`: the current key first, then any still-valid previous one (each signs)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            standard_signature(key, webhook_id=webhook_id, timestamp=timestamp, body=body)
            for key in keys
        ),
        "X-Hokusai-Signature": legacy_signature(keys[0], body),
    }
