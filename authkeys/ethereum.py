"""Sign-In with Ethereum (EIP-4361) maths: header decoding, message parsing, signature recovery.

Pure functions: no Django, no I/O, no clock (callers pass `now`). Every failure a client can
cause surfaces as `EthAuthError` with a stable `code`; the nonce is returned, not checked, because
consuming it must be atomic in Redis and that is the caller's job.

A request carries three headers:

    X-ETH-Address    0x + 40 hex digits, any case
    X-ETH-Signature  0x + 130 hex digits: r (32 bytes) || s (32 bytes) || v (1 byte); a
                     smart-contract wallet's (EIP-1271) may be longer, whatever its contract
                     checks, up to MAX_SIGNATURE_BYTES
    X-ETH-Message    standard base64 (RFC 4648 section 4, padded) of the UTF-8 message text,
                     because header values cannot carry the message's newlines

The message is the EIP-4361 text, signed with EIP-191 `personal_sign`:

    [scheme://]domain wants you to sign in with your Ethereum account:
    0xEIP55ChecksummedAddress

    optional statement (followed by one blank line when present)

    URI: https://api.example.com/
    Version: 1
    Chain ID: 1
    Nonce: 8+ alphanumerics
    Issued At: RFC 3339 date-time
    Expiration Time: RFC 3339 date-time      (optional in the spec, required by verify_siwe)
    Not Before: RFC 3339 date-time           (optional)
    Request ID: *pchar                       (optional)
    Resources:                               (optional, then zero or more "- URI" lines)
    - https://example.com/a

Lines are separated by a single LF and there is no trailing newline.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, NoReturn

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak, to_checksum_address

EthErrorCode = Literal[
    "eth_header_malformed",
    "eth_message_malformed",
    "eth_signature_invalid",
    "eth_address_mismatch",
    "eth_contract_wallet_chain",
    "eth_domain_mismatch",
    "eth_uri_mismatch",
    "eth_chain_not_allowed",
    "eth_message_expired",
    "eth_message_not_yet_valid",
    "eth_message_issued_in_future",
    "eth_expiration_required",
    "eth_message_too_old",
]


class EthAuthError(Exception):
    def __init__(self, code: EthErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: EthErrorCode = code
        self.detail = detail


# secp256k1 group order; signatures with s above half of it are the malleated twins (EIP-2).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2

DEFAULT_MAX_MESSAGE_BYTES = 4096
EOA_SIGNATURE_BYTES = 65
# Room for a multi-owner contract wallet's signatures (65 bytes per owner) and then some.
MAX_SIGNATURE_BYTES = 2048

# --- RFC 3986 / RFC 3339 / EIP-4361 grammar, ASCII only -----------------------------------------
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
# IP-literal is checked loosely here and properly in _valid_host.
_AUTHORITY = (
    rf"(?:(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*@)?"
    rf"(?P<host>\[[{_UNRESERVED}{_SUB_DELIMS}:]+\]|(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*)"
    r"(?::[0-9]*)?"
)
_SEGMENTS = rf"(?:/{_PCHAR}*)*"
_HIER_PART = (
    rf"(?://{_AUTHORITY}{_SEGMENTS}"  # authority + path-abempty
    rf"|/(?:{_PCHAR}+{_SEGMENTS})?"  # path-absolute
    rf"|{_PCHAR}+{_SEGMENTS}"  # path-rootless
    r"|)"  # path-empty
)
_QUERY_OR_FRAGMENT = rf"(?:{_PCHAR}|[/?])*"

_URI_RE = re.compile(
    rf"{_SCHEME}:{_HIER_PART}(?:\?{_QUERY_OR_FRAGMENT})?(?:#{_QUERY_OR_FRAGMENT})?", re.ASCII
)
_AUTHORITY_RE = re.compile(_AUTHORITY, re.ASCII)
_SCHEME_RE = re.compile(_SCHEME, re.ASCII)
_IPV_FUTURE_RE = re.compile(rf"[vV][0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+", re.ASCII)
_ADDRESS_RE = re.compile(r"0x[0-9A-Fa-f]{40}", re.ASCII)
_SIGNATURE_RE = re.compile(r"0x(?:[0-9A-Fa-f]{2})+", re.ASCII)
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}", re.ASCII)
_STATEMENT_RE = re.compile(rf"[{_UNRESERVED}:/?#\[\]@{_SUB_DELIMS} ]*", re.ASCII)
_CHAIN_ID_RE = re.compile(r"[0-9]+", re.ASCII)
_NONCE_RE = re.compile(r"[A-Za-z0-9]{8,}", re.ASCII)
_REQUEST_ID_RE = re.compile(rf"{_PCHAR}*", re.ASCII)
# ABNF literals are case-insensitive unless marked %s, so RFC 3339 allows "t" and "z" too.
_DATE_TIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))",
    re.ASCII,
)
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")

_HEADER_SUFFIX = " wants you to sign in with your Ethereum account:"


# --- Header decoding ----------------------------------------------------------------------------


def decode_address(value: str) -> str:
    """`0x` + 40 hex digits in any case -> the EIP-55 checksummed address."""
    # Length first: it is O(1) and bounds the cost of everything after it.
    if len(value) != 42 or not _ADDRESS_RE.fullmatch(value):
        raise EthAuthError("eth_header_malformed", "X-ETH-Address must be 0x and 40 hex digits.")
    return to_checksum_address(value)


def decode_signature(value: str) -> bytes:
    """`0x` + hex -> the signature bytes: 65 (r || s || v) for an ordinary account, up to
    MAX_SIGNATURE_BYTES for a smart-contract wallet."""
    if not 2 + 2 * EOA_SIGNATURE_BYTES <= len(
        value
    ) <= 2 + 2 * MAX_SIGNATURE_BYTES or not _SIGNATURE_RE.fullmatch(value):
        raise EthAuthError(
            "eth_header_malformed",
            "X-ETH-Signature must be 0x and 130 hex digits (65 bytes), or up to "
            f"{MAX_SIGNATURE_BYTES} bytes for a smart-contract wallet.",
        )
    return bytes.fromhex(value[2:])


def decode_message(value: str, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> str:
    """Standard, padded, canonical base64 of UTF-8 text -> the text, byte for byte.

    Only one spelling is accepted (no URL-safe alphabet, no missing padding, no stray bits),
    so a message has exactly one header value. The text may contain LF but no other control
    character; nothing is normalised, because the signature covers the exact bytes.
    """
    if not value or len(value) > 4 * -(-max_bytes // 3):
        raise EthAuthError(
            "eth_header_malformed", f"X-ETH-Message must be 1 to {max_bytes} bytes, base64."
        )
    if len(value) % 4 or not _BASE64_RE.fullmatch(value):
        raise EthAuthError("eth_header_malformed", "X-ETH-Message is not standard padded base64.")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise EthAuthError("eth_header_malformed", "X-ETH-Message is not valid base64.") from exc
    if base64.b64encode(raw).decode("ascii") != value:
        raise EthAuthError("eth_header_malformed", "X-ETH-Message is not canonical base64.")
    if len(raw) > max_bytes:
        raise EthAuthError("eth_header_malformed", f"X-ETH-Message exceeds {max_bytes} bytes.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EthAuthError("eth_header_malformed", "X-ETH-Message is not UTF-8 text.") from exc
    if _CONTROL_RE.search(text):
        raise EthAuthError(
            "eth_header_malformed", "X-ETH-Message contains control characters other than LF."
        )
    return text


def message_header(text: str) -> str:
    """The X-ETH-Message value for `text` (what clients and tests send)."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# --- The message --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SiweMessage:
    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: datetime
    version: str = "1"
    scheme: str | None = None
    # None: no statement lines at all; "": the ABNF's empty statement (one extra blank line).
    statement: str | None = None
    expiration_time: datetime | None = None
    not_before: datetime | None = None
    request_id: str | None = None
    # A "Resources:" line with no entries parses to (), the same as no section at all.
    resources: tuple[str, ...] = ()


def _malformed(detail: str) -> NoReturn:
    raise EthAuthError("eth_message_malformed", detail)


def _valid_host(host: str) -> bool:
    if not host.startswith("["):
        return True
    inner = host[1:-1]
    if _IPV_FUTURE_RE.fullmatch(inner):
        return True
    try:
        ipaddress.IPv6Address(inner)
    except ValueError:
        return False
    # RFC 3986 has no zone identifiers; the regex already excludes "%", this is belt and braces.
    return "%" not in inner


def _is_uri(value: str) -> bool:
    match = _URI_RE.fullmatch(value)
    return match is not None and _valid_host(match.group("host") or "")


def _parse_uri(value: str, field: str) -> str:
    if not _is_uri(value):
        _malformed(f"{field} is not an RFC 3986 URI.")
    return value


def _parse_date_time(value: str, field: str) -> datetime:
    """RFC 3339 date-time -> aware datetime.

    Python cannot hold a leap second (:60), year 0000 or more than microseconds; leap seconds
    and year 0 are refused, extra fraction digits are truncated.
    """
    match = _DATE_TIME_RE.fullmatch(value)
    if not match:
        _malformed(f"{field} is not an RFC 3339 date-time.")
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    try:
        offset = timedelta(0)
        if sign:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError("offset out of range")
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            if sign == "-":
                offset = -offset
        microsecond = int((fraction[1:] + "000000")[:6]) if fraction else 0
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            microsecond,
            tzinfo=timezone(offset),
        )
    except ValueError:
        _malformed(f"{field} is not a valid date-time.")


class _Lines:
    def __init__(self, text: str) -> None:
        self._lines = text.split("\n")
        self._index = 0

    def peek(self) -> str | None:
        return self._lines[self._index] if self._index < len(self._lines) else None

    def take(self, prefix: str = "") -> str:
        line = self.peek()
        if line is None:
            _malformed(f"Message ends before {prefix.strip() or 'a required line'}.")
        if not line.startswith(prefix):
            _malformed(f"Expected a line starting with {prefix!r}.")
        self._index += 1
        return line[len(prefix) :]

    def take_optional(self, prefix: str) -> str | None:
        line = self.peek()
        return self.take(prefix) if line is not None and line.startswith(prefix) else None

    def at_end(self) -> bool:
        return self._index >= len(self._lines)


def parse_siwe_message(text: str) -> SiweMessage:
    """Parse an EIP-4361 message exactly as its ABNF says; anything else is eth_message_malformed.

    The address must be EIP-55 checksummed (an all-lowercase address is refused: wallets emit
    the checksummed form and the reference parsers insist on it).
    """
    lines = _Lines(text)

    origin = lines.take()
    if not origin.endswith(_HEADER_SUFFIX):
        _malformed("First line must end with the EIP-4361 preamble.")
    origin = origin[: -len(_HEADER_SUFFIX)]
    # Neither scheme nor authority may contain "/", so "://" can only be the separator.
    scheme, separator, domain = origin.rpartition("://")
    if separator and not _SCHEME_RE.fullmatch(scheme):
        _malformed("Scheme is not an RFC 3986 scheme.")
    authority = _AUTHORITY_RE.fullmatch(domain)
    if authority is None or not _valid_host(authority.group("host")):
        _malformed("Domain is not an RFC 3986 authority.")

    address = lines.take()
    if not _ADDRESS_RE.fullmatch(address) or to_checksum_address(address) != address:
        _malformed("Address must be 0x and 40 hex digits in EIP-55 checksum case.")
    if lines.take() != "":
        _malformed("Expected a blank line after the address.")

    # ABNF: address LF LF [statement LF] LF. No statement leaves two blank lines after the
    # address; the empty statement the ABNF also allows leaves three.
    line = lines.take()
    statement: str | None = None
    if line or lines.peek() == "":
        if not _STATEMENT_RE.fullmatch(line):
            _malformed("Statement may only hold RFC 3986 reserved/unreserved characters and space.")
        statement = line
        if lines.take() != "":
            _malformed("Expected a blank line after the statement.")

    uri = _parse_uri(lines.take("URI: "), "URI")
    version = lines.take("Version: ")
    if version != "1":
        _malformed("Version must be 1.")
    chain_id_text = lines.take("Chain ID: ")
    if not _CHAIN_ID_RE.fullmatch(chain_id_text):
        _malformed("Chain ID must be decimal digits.")
    try:
        chain_id = int(chain_id_text)
    except ValueError:  # beyond int's digit limit
        _malformed("Chain ID is too long.")
    nonce = lines.take("Nonce: ")
    if not _NONCE_RE.fullmatch(nonce):
        _malformed("Nonce must be at least 8 letters or digits.")
    issued_at = _parse_date_time(lines.take("Issued At: "), "Issued At")

    expiration_text = lines.take_optional("Expiration Time: ")
    expiration_time = None
    if expiration_text is not None:
        expiration_time = _parse_date_time(expiration_text, "Expiration Time")
    not_before_text = lines.take_optional("Not Before: ")
    not_before = None
    if not_before_text is not None:
        not_before = _parse_date_time(not_before_text, "Not Before")
    request_id = lines.take_optional("Request ID: ")
    if request_id is not None and not _REQUEST_ID_RE.fullmatch(request_id):
        _malformed("Request ID may only hold RFC 3986 pchar characters.")
    resources: list[str] = []
    if lines.peek() == "Resources:":
        lines.take()
        while not lines.at_end():
            resources.append(_parse_uri(lines.take("- "), "Resource"))
    if not lines.at_end():
        _malformed("Unexpected line after the last field.")

    return SiweMessage(
        scheme=scheme if separator else None,
        domain=domain,
        address=address,
        statement=statement,
        uri=uri,
        version=version,
        chain_id=chain_id,
        nonce=nonce,
        issued_at=issued_at,
        expiration_time=expiration_time,
        not_before=not_before,
        request_id=request_id,
        resources=tuple(resources),
    )


def _format_date_time(value: datetime) -> str:
    if value.utcoffset() is None:
        raise ValueError("SIWE date-times must be timezone-aware.")
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def build_siwe_message(**fields: Any) -> str:
    """The canonical EIP-4361 text for SiweMessage(**fields), for clients, tests and benchmarks.

    Raises ValueError when the fields would not make a valid message.
    """
    message = SiweMessage(**fields)
    origin = f"{message.scheme}://{message.domain}" if message.scheme else message.domain
    lines = [origin + _HEADER_SUFFIX, message.address, ""]
    if message.statement is not None:
        lines.append(message.statement)
    lines += [
        "",
        f"URI: {message.uri}",
        f"Version: {message.version}",
        f"Chain ID: {message.chain_id}",
        f"Nonce: {message.nonce}",
        f"Issued At: {_format_date_time(message.issued_at)}",
    ]
    if message.expiration_time is not None:
        lines.append(f"Expiration Time: {_format_date_time(message.expiration_time)}")
    if message.not_before is not None:
        lines.append(f"Not Before: {_format_date_time(message.not_before)}")
    if message.request_id is not None:
        lines.append(f"Request ID: {message.request_id}")
    if message.resources:
        lines.append("Resources:")
        lines += [f"- {resource}" for resource in message.resources]
    text = "\n".join(lines)
    try:
        parse_siwe_message(text)
    except EthAuthError as exc:
        raise ValueError(exc.detail) from exc
    return text


# --- Signature ----------------------------------------------------------------------------------


def recover_signer(message: str, signature: bytes) -> str:
    """EIP-191 personal_sign recovery -> checksummed signer address.

    Only the low-s form of a signature is accepted (EIP-2), so one signed message has exactly
    one valid signature; v must be 27/28 (0/1 are normalised to them).
    """
    if len(signature) != EOA_SIGNATURE_BYTES:
        raise EthAuthError("eth_signature_invalid", "Signature must be 65 bytes.")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v in (0, 1):
        v += 27
    if v not in (27, 28):
        raise EthAuthError("eth_signature_invalid", "Signature v must be 27 or 28.")
    if not 0 < r < SECP256K1_N or not 0 < s <= SECP256K1_HALF_N:
        raise EthAuthError("eth_signature_invalid", "Signature r/s out of range (high s?).")
    try:
        return Account.recover_message(
            encode_defunct(text=message), signature=signature[:64] + bytes([v])
        )
    except Exception as exc:  # eth-account raises a zoo of types; all mean "not a signature"
        raise EthAuthError("eth_signature_invalid", "Signature does not recover.") from exc


def eip191_hash(message: str) -> bytes:
    """The hash personal_sign signs, which an EIP-1271 contract is asked about."""
    data = message.encode("utf-8")
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)


# Asked whether a smart-contract wallet accepts a signature: (address, EIP-191 hash, signature,
# chain id) -> bool. It may raise EthAuthError (e.g. a chain it cannot check).
ContractWalletCheck = Callable[[str, bytes, bytes, int], bool]


# --- Verification -------------------------------------------------------------------------------


def _uri_allowed(uri: str, prefixes: tuple[str, ...]) -> bool:
    # A prefix only matches at a boundary, so "https://a.example" does not admit
    # "https://a.example.evil.net/".
    return any(
        uri == prefix
        or (uri.startswith(prefix) and (prefix.endswith("/") or uri[len(prefix)] in "/?#"))
        for prefix in prefixes
        if prefix
    )


def verify_siwe(
    *,
    address_header: str,
    signature_header: str,
    message_header: str,
    expected_domain: str,
    expected_uri_prefixes: tuple[str, ...],
    allowed_chain_ids: frozenset[int],
    now: datetime,
    max_clock_skew: timedelta,
    max_age: timedelta,
    contract_wallet_check: ContractWalletCheck | None = None,
) -> SiweMessage:
    """Check a SIWE header set and return the parsed message (its nonce is the caller's to burn).

    Time rules, with `skew` = max_clock_skew:
      - Expiration Time is required; refused once now >= expiration (no skew: the signer chose it).
      - Not Before: refused while now + skew < not_before.
      - Issued At: refused if issued_at > now + skew (future) or issued_at < now - max_age.
    Claims are checked before the (costly) signature recovery, so garbage is cheap to refuse.

    A signature that does not recover to the address is put to the address's contract
    (EIP-1271) through `contract_wallet_check`; without one it is refused, saying why.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware.")
    address = decode_address(address_header)
    signature = decode_signature(signature_header)
    text = decode_message(message_header)
    message = parse_siwe_message(text)

    if message.address.lower() != address.lower():
        raise EthAuthError("eth_address_mismatch", "X-ETH-Address differs from the message.")
    if message.domain.lower() != expected_domain.lower():
        raise EthAuthError("eth_domain_mismatch", f"Message domain must be {expected_domain}.")
    if not _uri_allowed(message.uri, expected_uri_prefixes):
        raise EthAuthError("eth_uri_mismatch", "Message URI is not one this service accepts.")
    if message.chain_id not in allowed_chain_ids:
        raise EthAuthError("eth_chain_not_allowed", f"Chain ID {message.chain_id} not allowed.")

    if message.expiration_time is None:
        raise EthAuthError("eth_expiration_required", "Message must carry an Expiration Time.")
    if message.issued_at > now + max_clock_skew:
        raise EthAuthError("eth_message_issued_in_future", "Issued At is in the future.")
    if message.issued_at < now - max_age:
        raise EthAuthError("eth_message_too_old", "Issued At is too far in the past.")
    if now >= message.expiration_time:
        raise EthAuthError("eth_message_expired", "Message has expired.")
    if message.not_before is not None and now + max_clock_skew < message.not_before:
        raise EthAuthError("eth_message_not_yet_valid", "Message is not valid yet (Not Before).")

    try:
        if recover_signer(text, signature).lower() == address.lower():
            return message
        mismatch = EthAuthError("eth_address_mismatch", "Signature was not made by X-ETH-Address.")
    except EthAuthError as exc:
        mismatch = exc
    if contract_wallet_check is None:
        raise EthAuthError(
            mismatch.code,
            f"{mismatch.detail} Smart-contract wallets (EIP-1271) are not verified on this "
            "server (ETH_RPC_URL is not set).",
        )
    if not contract_wallet_check(message.address, eip191_hash(text), signature, message.chain_id):
        raise EthAuthError(
            "eth_address_mismatch",
            "Signature was not made by X-ETH-Address, nor accepted by its contract (EIP-1271).",
        )
    return message
