"""Sign-In with Ethereum maths, on its own: no database, no clock, wallets made from fixed keys."""

import base64
import contextlib
import string
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authkeys.ethereum import (
    MAX_SIGNATURE_BYTES,
    SECP256K1_N,
    EthAuthError,
    SiweMessage,
    build_siwe_message,
    decode_address,
    decode_message,
    decode_signature,
    message_header,
    parse_siwe_message,
    recover_signer,
    verify_siwe,
)

ALICE = Account.from_key("0x" + "a1" * 32)
MALLORY = Account.from_key("0x" + "b2" * 32)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SKEW = timedelta(seconds=30)
MAX_AGE = timedelta(minutes=15)
DOMAIN = "api.hokusai.test"
URI = "https://api.hokusai.test/api/v1/"

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fields(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "domain": DOMAIN,
        "address": ALICE.address,
        "statement": "Sign in to Hokusai.",
        "uri": URI,
        "chain_id": 1,
        "nonce": "n0nce0123456789",
        "issued_at": NOW - timedelta(minutes=1),
        "expiration_time": NOW + timedelta(minutes=10),
    }
    return values | overrides


def sign(text: str, account: Any = ALICE) -> bytes:
    return bytes(account.sign_message(encode_defunct(text=text)).signature)


def hex0x(raw: bytes) -> str:
    return "0x" + raw.hex()


def headers(text: str, *, signer: Any = ALICE, address: str | None = None) -> dict[str, str]:
    return {
        "address_header": address or signer.address,
        "signature_header": hex0x(sign(text, signer)),
        "message_header": message_header(text),
    }


def verify(header_set: dict[str, str], **policy: Any) -> SiweMessage:
    arguments: dict[str, Any] = {
        "expected_domain": DOMAIN,
        "expected_uri_prefixes": ("https://api.hokusai.test/",),
        "allowed_chain_ids": frozenset({1, 8453}),
        "now": NOW,
        "max_clock_skew": SKEW,
        "max_age": MAX_AGE,
    }
    return verify_siwe(**header_set, **(arguments | policy))


def error_code(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(EthAuthError) as caught:
        call(*args, **kwargs)
    return caught.value.code


def malleate(signature: bytes) -> bytes:
    """The other valid (r, n - s, flipped v) signature of the same message and key."""
    s = int.from_bytes(signature[32:64], "big")
    return signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])


VALID_TEXT = build_siwe_message(**fields())
VALID_HEADERS = headers(VALID_TEXT)


# --- Happy paths --------------------------------------------------------------------------------


def test_valid_header_set_returns_the_parsed_message():
    message = verify(VALID_HEADERS)

    assert message == SiweMessage(**fields())
    assert message.nonce == "n0nce0123456789"
    assert message.address == ALICE.address


def test_message_without_statement_is_accepted():
    text = build_siwe_message(**fields(statement=None))

    assert "\n\n\nURI: " in text
    assert verify(headers(text)).statement is None


def test_message_with_every_optional_field_is_accepted():
    text = build_siwe_message(
        **fields(
            scheme="https",
            not_before=NOW - timedelta(seconds=5),
            request_id="req-42:@x",
            resources=("ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",),
        )
    )

    message = verify(headers(text))

    assert message.scheme == "https"
    assert message.not_before == NOW - timedelta(seconds=5)
    assert message.request_id == "req-42:@x"
    assert message.resources == (
        "ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",
    )


def test_the_specs_example_message_parses_field_by_field():
    text = (
        "https://example.com:3388 wants you to sign in with your Ethereum account:\n"
        "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2\n"
        "\n"
        "I accept the ExampleOrg Terms of Service: https://example.com/tos\n"
        "\n"
        "URI: https://example.com/login\n"
        "Version: 1\n"
        "Chain ID: 1\n"
        "Nonce: 32891756\n"
        "Issued At: 2021-09-30T16:25:24Z\n"
        "Resources:\n"
        "- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/\n"
        "- https://example.com/my-web2-claim.json"
    )

    message = parse_siwe_message(text)

    assert message == SiweMessage(
        scheme="https",
        domain="example.com:3388",
        address="0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",
        statement="I accept the ExampleOrg Terms of Service: https://example.com/tos",
        uri="https://example.com/login",
        version="1",
        chain_id=1,
        nonce="32891756",
        issued_at=datetime(2021, 9, 30, 16, 25, 24, tzinfo=UTC),
        resources=(
            "ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",
            "https://example.com/my-web2-claim.json",
        ),
    )
    assert build_siwe_message(**vars(message)) == text


def test_statement_absent_and_empty_are_told_apart_by_the_number_of_blank_lines():
    head = (
        "example.com wants you to sign in with your Ethereum account:\n"
        "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2\n"
    )
    tail = (
        "URI: https://example.com/\nVersion: 1\nChain ID: 1\nNonce: 32891756\n"
        "Issued At: 2021-09-30T16:25:24Z"
    )

    assert parse_siwe_message(head + "\n\n" + tail).statement is None
    assert parse_siwe_message(head + "\n\n\n" + tail).statement == ""
    assert parse_siwe_message(head + "\nhi\n\n" + tail).statement == "hi"
    # A statement that looks like the URI line is still a statement.
    looks_like_uri = parse_siwe_message(head + "\nURI: https://evil.test/\n\n" + tail)
    assert looks_like_uri.statement == "URI: https://evil.test/"
    assert looks_like_uri.uri == "https://example.com/"


def test_rfc3339_offsets_fractions_and_lowercase_t_z_are_understood():
    text = VALID_TEXT.replace(
        "Issued At: 2030-01-01T11:59:00Z", "Issued At: 2030-01-01t13:29:00.1234567+01:30"
    )

    issued_at = parse_siwe_message(text).issued_at

    assert issued_at == datetime(2030, 1, 1, 11, 59, 0, 123456, tzinfo=UTC)
    assert parse_siwe_message(text.replace("+01:30", "z")).issued_at.utcoffset() == timedelta(0)


def test_domain_with_port_and_ipv6_uri_are_accepted():
    text = build_siwe_message(**fields(domain="localhost:8000", uri="http://[::1]:8000/api/"))

    message = verify(
        headers(text),
        expected_domain="LOCALHOST:8000",
        expected_uri_prefixes=("http://[::1]:8000/",),
    )

    assert message.domain == "localhost:8000"


def test_address_header_is_case_insensitive():
    for spelling in (ALICE.address.lower(), "0x" + ALICE.address[2:].upper()):
        assert verify(headers(VALID_TEXT, address=spelling)).address == ALICE.address


def test_domain_comparison_ignores_case():
    text = build_siwe_message(**fields(domain="API.Hokusai.TEST"))

    assert verify(headers(text)).domain == "API.Hokusai.TEST"


# --- Who signed -------------------------------------------------------------------------------


def test_address_header_differing_from_the_message_is_refused():
    header_set = headers(VALID_TEXT) | {"address_header": MALLORY.address}

    assert error_code(verify, header_set) == "eth_address_mismatch"


def test_signature_by_another_wallet_is_refused():
    assert error_code(verify, headers(VALID_TEXT, signer=MALLORY, address=ALICE.address)) == (
        "eth_address_mismatch"
    )


def test_message_naming_another_wallet_is_refused_even_when_header_and_signer_agree():
    text = build_siwe_message(**fields(address=MALLORY.address))

    assert error_code(verify, headers(text, signer=ALICE)) == "eth_address_mismatch"


def test_malleated_high_s_twin_of_a_valid_signature_is_refused():
    signature = sign(VALID_TEXT)
    twin = malleate(signature)
    # eth-account alone would accept the twin: this is what the module guards against.
    assert Account.recover_message(encode_defunct(text=VALID_TEXT), signature=twin) == ALICE.address

    header_set = VALID_HEADERS | {"signature_header": hex0x(twin)}

    assert error_code(verify, header_set) == "eth_signature_invalid"


@pytest.mark.parametrize("offset", [27, 0])
def test_v_as_27_28_or_0_1_is_accepted(offset):
    signature = sign(VALID_TEXT)
    header_set = VALID_HEADERS | {
        "signature_header": hex0x(signature[:64] + bytes([signature[64] - 27 + offset]))
    }

    assert verify(header_set).address == ALICE.address


@pytest.mark.parametrize("v", [2, 26, 29, 35, 36, 255])
def test_other_v_values_are_refused(v):
    header_set = VALID_HEADERS | {"signature_header": hex0x(sign(VALID_TEXT)[:64] + bytes([v]))}

    assert error_code(verify, header_set) == "eth_signature_invalid"


@pytest.mark.parametrize(
    "signature",
    [
        bytes(64) + b"\x1b",
        b"\xff" * 64 + b"\x1b",
        b"\x01" * 32 + bytes(32) + b"\x1c",
        SECP256K1_N.to_bytes(32, "big") + b"\x01" * 32 + b"\x1b",
    ],
    ids=["zero", "all-ff", "s-zero", "r-equals-n"],
)
def test_signatures_that_do_not_recover_are_refused(signature):
    assert error_code(recover_signer, VALID_TEXT, signature) == "eth_signature_invalid"


def test_any_failure_inside_eth_account_is_a_signature_error(monkeypatch):
    def explode(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("backend fell over")

    monkeypatch.setattr(Account, "recover_message", explode)

    assert error_code(recover_signer, VALID_TEXT, sign(VALID_TEXT)) == "eth_signature_invalid"


def test_recover_signer_returns_the_checksummed_signer():
    assert recover_signer("hello", sign("hello")) == ALICE.address


# --- What was signed --------------------------------------------------------------------------


def test_wrong_domain_is_refused():
    text = build_siwe_message(**fields(domain="hokusai.evil.test"))

    assert error_code(verify, headers(text)) == "eth_domain_mismatch"


@pytest.mark.parametrize(
    ("uri", "prefixes"),
    [
        ("https://evil.test/api/v1/", ("https://api.hokusai.test/",)),
        ("http://api.hokusai.test/api/v1/", ("https://api.hokusai.test/",)),
        ("https://api.hokusai.test.evil.net/", ("https://api.hokusai.test",)),
        ("https://api.hokusai.test/", ()),
    ],
)
def test_uri_outside_the_expected_prefixes_is_refused(uri, prefixes):
    text = build_siwe_message(**fields(uri=uri))

    assert error_code(verify, headers(text), expected_uri_prefixes=prefixes) == "eth_uri_mismatch"


def test_uri_prefix_without_trailing_slash_matches_at_a_path_boundary():
    text = build_siwe_message(**fields(uri="https://api.hokusai.test/login"))

    assert verify(headers(text), expected_uri_prefixes=("https://api.hokusai.test",))


def test_chain_not_allowed_is_refused():
    text = build_siwe_message(**fields(chain_id=5))

    assert error_code(verify, headers(text)) == "eth_chain_not_allowed"


# --- When it was signed -----------------------------------------------------------------------


def test_message_without_expiration_time_is_refused():
    text = build_siwe_message(**fields(expiration_time=None))

    assert error_code(verify, headers(text)) == "eth_expiration_required"


@pytest.mark.parametrize("after", [timedelta(0), timedelta(seconds=1), timedelta(days=1)])
def test_message_is_expired_from_its_expiration_time_on_without_skew(after):
    text = build_siwe_message(**fields(expiration_time=NOW - after))

    assert error_code(verify, headers(text)) == "eth_message_expired"


def test_message_is_valid_until_just_before_its_expiration_time():
    text = build_siwe_message(**fields(expiration_time=NOW + timedelta(microseconds=1)))

    assert verify(headers(text))


def test_message_before_its_not_before_time_beyond_skew_is_refused():
    text = build_siwe_message(**fields(not_before=NOW + SKEW + timedelta(seconds=1)))

    assert error_code(verify, headers(text)) == "eth_message_not_yet_valid"


def test_not_before_within_skew_is_tolerated():
    text = build_siwe_message(**fields(not_before=NOW + SKEW))

    assert verify(headers(text))


def test_message_issued_in_the_future_beyond_skew_is_refused():
    text = build_siwe_message(**fields(issued_at=NOW + SKEW + timedelta(seconds=1)))

    assert error_code(verify, headers(text)) == "eth_message_issued_in_future"


def test_message_issued_in_the_future_within_skew_is_tolerated():
    text = build_siwe_message(**fields(issued_at=NOW + SKEW))

    assert verify(headers(text))


def test_message_issued_longer_ago_than_max_age_is_refused():
    text = build_siwe_message(**fields(issued_at=NOW - MAX_AGE - timedelta(seconds=1)))

    assert error_code(verify, headers(text)) == "eth_message_too_old"


def test_naive_now_is_a_programming_error():
    with pytest.raises(ValueError, match="aware"):
        verify(VALID_HEADERS, now=NOW.replace(tzinfo=None))


# --- Malformed headers ------------------------------------------------------------------------

HUGE = 10_000_000

BAD_ADDRESSES = [
    "",
    "0x",
    ALICE.address[:-1],
    ALICE.address + "0",
    ALICE.address[2:],
    "0X" + ALICE.address[2:],
    "0x" + "g" * 40,
    " " + ALICE.address,
    ALICE.address + "\n",
    ALICE.address[:20] + "\x00" + ALICE.address[21:],
    "0x" + "\u0660" * 40,  # Arabic-Indic zero: a digit to Unicode-aware regexes
    "0x" + "é" * 40,
    "0x" + "a" * HUGE,
]


@pytest.mark.parametrize("value", BAD_ADDRESSES, ids=range(len(BAD_ADDRESSES)))
def test_malformed_address_header_is_refused(value):
    assert error_code(decode_address, value) == "eth_header_malformed"
    assert error_code(verify, VALID_HEADERS | {"address_header": value}) == "eth_header_malformed"


GOOD_SIGNATURE_HEX = VALID_HEADERS["signature_header"]
BAD_SIGNATURES = [
    "",
    GOOD_SIGNATURE_HEX[2:],
    GOOD_SIGNATURE_HEX[:-2],
    GOOD_SIGNATURE_HEX + "0",  # odd number of digits
    "0x" + "ab" * (MAX_SIGNATURE_BYTES + 1),
    GOOD_SIGNATURE_HEX[:-1] + "z",
    GOOD_SIGNATURE_HEX[:-1] + " ",
    GOOD_SIGNATURE_HEX[:-1] + "\r",
    GOOD_SIGNATURE_HEX[:-1] + "é",
    base64.b64encode(sign(VALID_TEXT)).decode(),
    "0x" + "f" * HUGE,
]


def test_a_longer_signature_is_a_contract_wallets_and_needs_a_contract_check():
    longer = GOOD_SIGNATURE_HEX + "00"
    assert len(decode_signature(longer)) == 66
    assert error_code(verify, VALID_HEADERS | {"signature_header": longer}) == (
        "eth_signature_invalid"
    )


@pytest.mark.parametrize("value", BAD_SIGNATURES, ids=range(len(BAD_SIGNATURES)))
def test_malformed_signature_header_is_refused(value):
    assert error_code(decode_signature, value) == "eth_header_malformed"
    assert error_code(verify, VALID_HEADERS | {"signature_header": value}) == (
        "eth_header_malformed"
    )


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


BAD_MESSAGES = {
    "empty": "",
    "not base64": "not base64!",
    "url-safe alphabet": base64.urlsafe_b64encode(b"\xfb\xff\xbe" * 4).decode(),
    "missing padding": b64(b"ab").rstrip("="),
    "non-canonical trailing bits": "QR==",
    "whitespace inside": b64(b"abcdef")[:4] + "\n" + b64(b"abcdef")[4:],
    "not utf-8": b64(b"\xff\xfe hello"),
    "nul": b64(b"hello\x00world"),
    "crlf": b64(b"hello\r\nworld"),
    "tab": b64(b"hello\tworld"),
    "c1 next line": b64("hello\u0085world".encode()),
    "one byte over the limit": b64(b"a" * 4097),
    "huge": "A" * HUGE,
}


@pytest.mark.parametrize("value", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_malformed_message_header_is_refused(value):
    assert error_code(decode_message, value) == "eth_header_malformed"
    assert error_code(verify, VALID_HEADERS | {"message_header": value}) == "eth_header_malformed"


def test_message_header_limit_is_configurable_and_inclusive():
    assert decode_message(b64(b"a" * 10), max_bytes=10) == "a" * 10
    assert error_code(decode_message, b64(b"a" * 11), max_bytes=10) == "eth_header_malformed"


def test_message_header_keeps_non_ascii_text_and_newlines_byte_for_byte():
    assert decode_message(message_header("Grüße\nまた")) == "Grüße\nまた"


@pytest.mark.parametrize(
    ("decode", "value"),
    [
        (decode_address, "0x" + "a" * HUGE),
        (decode_signature, "0x" + "a" * HUGE),
        (decode_message, "A" * HUGE),
    ],
    ids=["address", "signature", "message"],
)
def test_huge_header_values_are_refused_without_reading_them(decode, value):
    started = time.perf_counter()

    assert error_code(decode, value) == "eth_header_malformed"
    assert time.perf_counter() - started < 0.05


# --- Malformed messages -----------------------------------------------------------------------


def swap_lines(text: str, first: str, second: str) -> str:
    lines = text.split("\n")
    i = next(n for n, line in enumerate(lines) if line.startswith(first))
    j = next(n for n, line in enumerate(lines) if line.startswith(second))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


FULL_TEXT = build_siwe_message(
    **fields(not_before=NOW - timedelta(minutes=1), request_id="r1", resources=("https://a.test/",))
)

NEAR_MISSES = {
    "extra line at the end": VALID_TEXT + "\nP.S. hello",
    "trailing newline": VALID_TEXT + "\n",
    "leading blank line": "\n" + VALID_TEXT,
    "crlf line endings": VALID_TEXT.replace("\n", "\r\n"),
    "missing Version": VALID_TEXT.replace("Version: 1\n", ""),
    "Version 2": VALID_TEXT.replace("Version: 1", "Version: 2"),
    "Version 01": VALID_TEXT.replace("Version: 1", "Version: 01"),
    "lowercase uri:": VALID_TEXT.replace("URI: ", "uri: "),
    "no space after URI:": VALID_TEXT.replace("URI: ", "URI:"),
    "trailing space after nonce": VALID_TEXT.replace(
        "Nonce: n0nce0123456789", "Nonce: n0nce0123456789 "
    ),
    "trailing space after preamble": VALID_TEXT.replace("account:\n", "account: \n"),
    "trailing space after address": VALID_TEXT.replace(ALICE.address, ALICE.address + " "),
    "nonce too short": VALID_TEXT.replace("n0nce0123456789", "n0nce01"),
    "nonce with a dash": VALID_TEXT.replace("n0nce0123456789", "n0nce-0123456789"),
    "nonce with unicode digits": VALID_TEXT.replace("n0nce0123456789", "n0nce" + "\u0661" * 8),
    "bad date": VALID_TEXT.replace("2030-01-01T11:59:00Z", "2030-02-30T11:59:00Z"),
    "date without offset": VALID_TEXT.replace("2030-01-01T11:59:00Z", "2030-01-01T11:59:00"),
    "date with a space": VALID_TEXT.replace("2030-01-01T11:59:00Z", "2030-01-01 11:59:00Z"),
    "leap second": VALID_TEXT.replace("2030-01-01T11:59:00Z", "2030-01-01T11:59:60Z"),
    "offset hour 24": VALID_TEXT.replace("2030-01-01T11:59:00Z", "2030-01-01T11:59:00+24:00"),
    "year zero": VALID_TEXT.replace("2030-01-01T11:59:00Z", "0000-01-01T11:59:00Z"),
    "bad expiration": VALID_TEXT.replace("Expiration Time: 2030", "Expiration Time: 20300"),
    "lowercase address": VALID_TEXT.replace(ALICE.address, ALICE.address.lower()),
    "wrong checksum case": VALID_TEXT.replace(ALICE.address, "0x" + ALICE.address[2:].swapcase()),
    "short address": VALID_TEXT.replace(ALICE.address, ALICE.address[:-1]),
    "preamble without colon": VALID_TEXT.replace("account:", "account"),
    "no blank line after address": VALID_TEXT.replace(ALICE.address + "\n\n", ALICE.address + "\n"),
    "no blank line after statement": VALID_TEXT.replace("Hokusai.\n\n", "Hokusai.\n"),
    "statement with a quote": VALID_TEXT.replace("Sign in to Hokusai.", 'Say "hi"'),
    "statement with non-ascii": VALID_TEXT.replace("Sign in to Hokusai.", "Grüße"),
    "two statement lines": VALID_TEXT.replace("Hokusai.\n", "Hokusai.\nMore.\n"),
    "uri with a space": VALID_TEXT.replace(URI, "https://api.hokusai.test/a b"),
    "relative uri": VALID_TEXT.replace(URI, "/api/v1/"),
    "uri with bad percent escape": VALID_TEXT.replace(URI, "https://api.hokusai.test/%zz"),
    "uri with bad ipv6": VALID_TEXT.replace(URI, "https://[::g]/"),
    "domain with a path": VALID_TEXT.replace(DOMAIN + " wants", DOMAIN + "/x wants"),
    "domain with bad port": VALID_TEXT.replace(DOMAIN + " wants", DOMAIN + ":http wants"),
    "scheme starting with a digit": VALID_TEXT.replace(
        DOMAIN + " wants", "1https://" + DOMAIN + " wants"
    ),
    "hex chain id": VALID_TEXT.replace("Chain ID: 1", "Chain ID: 0x1"),
    "negative chain id": VALID_TEXT.replace("Chain ID: 1", "Chain ID: -1"),
    "empty chain id": VALID_TEXT.replace("Chain ID: 1", "Chain ID: "),
    "duplicated nonce": VALID_TEXT.replace("Nonce: ", "Nonce: abcdefgh1\nNonce: "),
    "not before ahead of expiration": swap_lines(FULL_TEXT, "Expiration Time: ", "Not Before: "),
    "request id with a space": FULL_TEXT.replace("Request ID: r1", "Request ID: r 1"),
    "resource without dash": FULL_TEXT.replace("- https://a.test/", "https://a.test/"),
    "resource not a uri": FULL_TEXT.replace("- https://a.test/", "- not a uri"),
    "request id after resources": swap_lines(FULL_TEXT, "Request ID: ", "Resources:"),
    "nonce ahead of chain id": swap_lines(VALID_TEXT, "Chain ID: ", "Nonce: "),
    "not a siwe message": "hello world",
    "empty": "",
}


@pytest.mark.parametrize("text", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_near_miss_message_is_malformed(text):
    assert text != VALID_TEXT
    assert error_code(parse_siwe_message, text) == "eth_message_malformed"


def test_near_miss_message_is_malformed_through_verify_too():
    text = VALID_TEXT.replace("Version: 1", "Version: 2")

    assert error_code(verify, headers(text)) == "eth_message_malformed"


def test_builder_refuses_fields_that_make_no_valid_message():
    with pytest.raises(ValueError):
        build_siwe_message(**fields(nonce="short"))
    with pytest.raises(ValueError):
        build_siwe_message(**fields(issued_at=NOW.replace(tzinfo=None)))


# --- Properties -------------------------------------------------------------------------------

header_text = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda raw: raw.decode("latin-1")),  # what WSGI hands Django
    st.from_regex(r"0x[0-9a-fA-F]{0,140}", fullmatch=True),
)


@FUZZ
@given(value=header_text, name=st.sampled_from(sorted(VALID_HEADERS)))
def test_arbitrary_header_values_only_ever_raise_eth_auth_error(value, name):
    with contextlib.suppress(EthAuthError):
        verify(VALID_HEADERS | {name: value})


@FUZZ
@given(raw=st.binary(max_size=600))
def test_arbitrary_bytes_as_the_message_only_ever_raise_eth_auth_error(raw):
    with contextlib.suppress(EthAuthError):
        verify(VALID_HEADERS | {"message_header": b64(raw)})


@FUZZ
@given(data=st.data())
def test_one_character_edits_of_a_valid_message_parse_or_raise_eth_auth_error(data):
    index = data.draw(st.integers(0, len(FULL_TEXT)))
    edit = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    char = data.draw(st.characters(max_codepoint=0x2FF))
    text = {
        "insert": FULL_TEXT[:index] + char + FULL_TEXT[index:],
        "delete": FULL_TEXT[:index] + FULL_TEXT[index + 1 :],
        "replace": FULL_TEXT[:index] + char + FULL_TEXT[index + 1 :],
    }[edit]
    try:
        parse_siwe_message(text)
    except EthAuthError as error:
        assert error.code == "eth_message_malformed"


ALNUM = string.ascii_letters + string.digits
PCHAR = ALNUM + "-._~!$&'()*+,;=:@"
STATEMENT = ALNUM + "-._~:/?#[]@!$&'()*+,;= "

hosts = st.one_of(
    st.from_regex(r"[a-z0-9-]{1,15}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True),
    st.sampled_from(["[::1]", "[2001:db8::7]", "127.0.0.1", "[v1.fe80::a+en1]"]),
)
domains = st.builds(
    lambda userinfo, host, port: userinfo + host + port,
    st.sampled_from(["", "", "", "user@", "user:pw@"]),
    hosts,
    st.one_of(st.just(""), st.integers(0, 65535).map(lambda port: f":{port}")),
)
uris = st.one_of(
    st.builds(
        lambda scheme, domain, path, query, fragment: f"{scheme}://{domain}{path}{query}{fragment}",
        st.sampled_from(["https", "http", "ipfs", "did+web"]),
        domains,
        st.lists(st.text(PCHAR, max_size=8), max_size=3).map(
            lambda segments: "".join("/" + segment for segment in segments)
        ),
        st.one_of(st.just(""), st.text(PCHAR + "/?", max_size=10).map(lambda q: "?" + q)),
        st.one_of(st.just(""), st.text(PCHAR + "/?", max_size=10).map(lambda f: "#" + f)),
    ),
    st.from_regex(r"urn:[a-z]{1,8}:[A-Za-z0-9:.%-]{1,20}", fullmatch=True).filter(
        lambda uri: "%" not in uri
    ),
    st.just("mailto:someone@example.com"),
)
timezones = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
moments = st.datetimes(
    min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30), timezones=timezones
)
messages = st.builds(
    SiweMessage,
    scheme=st.one_of(st.none(), st.from_regex(r"[a-z][a-z0-9+.-]{0,8}", fullmatch=True)),
    domain=domains,
    address=st.binary(min_size=20, max_size=20).map(lambda raw: decode_address(hex0x(raw))),
    statement=st.one_of(st.none(), st.text(STATEMENT, max_size=60)),
    uri=uris,
    chain_id=st.integers(0, 2**256),
    nonce=st.text(ALNUM, min_size=8, max_size=24),
    issued_at=moments,
    expiration_time=st.one_of(st.none(), moments),
    not_before=st.one_of(st.none(), moments),
    request_id=st.one_of(st.none(), st.text(PCHAR, max_size=20)),
    resources=st.lists(uris, max_size=3).map(tuple),
)


@FUZZ
@given(message=messages)
def test_parse_of_build_round_trips(message):
    text = build_siwe_message(**vars(message))

    assert parse_siwe_message(text) == message
    assert decode_message(message_header(text)) == text
