"""The API key format.

    hk_live_AbCd1234EfGh5678IjKl9012MnOp3456Xy7z9Q
    └─┬───┘└──┬───┘└──────────┬───────────┘└─┬──┘
   kind+env  lookup id     secret part      checksum

- `hk_live_` / `hk_test_`: recognisable by secret scanners; the environment the key works in.
- lookup id: 8 base62 characters; with the kind it forms the public *prefix*, stored and shown
  (lists, logs, audit) and used to find the key's row.
- secret part: 24 base62 characters from `secrets` (with the lookup id, ~190 random bits).
- checksum: CRC32 of everything before it, 6 base62 characters, so a typo or a truncated key fails
  without a database hit and a leaked key can be recognised offline.

Only the prefix and an HMAC-SHA256 of the whole key (keyed with a server-side pepper) are stored.
Keys are high-entropy, so a fast keyed hash is enough; a slow password hash would only add latency.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ENVIRONMENTS = ("live", "test")
LOOKUP_LENGTH = 8
SECRET_LENGTH = 24
CHECKSUM_LENGTH = 6
KEY_PATTERN = re.compile(
    rf"^hk_(live|test)_([0-9A-Za-z]{{{LOOKUP_LENGTH + SECRET_LENGTH}}})"
    rf"([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})$"
)
KEY_LENGTH = len("hk_live_") + LOOKUP_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH


class MalformedKey(ValueError):
    pass


@dataclass(frozen=True)
class ParsedKey:
    key: str
    environment: str
    prefix: str


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(ALPHABET[remainder])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def generate(environment: str = "live") -> ParsedKey:
    if environment not in ENVIRONMENTS:
        raise ValueError(f"environment must be one of {ENVIRONMENTS}")
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(LOOKUP_LENGTH + SECRET_LENGTH))
    body = f"hk_{environment}_{random_part}"
    return parse(body + _checksum(body))


def parse(key: str) -> ParsedKey:
    """Checks the shape and checksum; raises MalformedKey without touching any store."""
    match = KEY_PATTERN.match(key)
    if match is None:
        raise MalformedKey("not a Hokusai API key")
    body = key[:-CHECKSUM_LENGTH]
    if not hmac.compare_digest(_checksum(body), match.group(3)):
        raise MalformedKey("API key checksum does not match")
    environment = match.group(1)
    prefix = f"hk_{environment}_{match.group(2)[:LOOKUP_LENGTH]}"
    return ParsedKey(key=key, environment=environment, prefix=prefix)


def digest(key: str, *, pepper: bytes) -> str:
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def looks_like_key(text: str) -> bool:
    """For refusing keys sent where they leak (query strings): the shape, not the checksum."""
    return KEY_PATTERN.match(text) is not None
