"""Sign-In with Ethereum over HTTP: wallets made and signed locally with eth-account."""

from datetime import UTC, datetime, timedelta

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from authkeys import ethereum
from authkeys.models import ApiKey, EthIdentity

pytestmark = pytest.mark.django_db

KEYS_URL = "/api/v1/keys"
NONCE_URL = "/api/v1/auth/eth/nonce"


@pytest.fixture
def wallet():
    return Account.create()


def signed_headers(client, wallet, **overrides) -> dict:
    """Headers for one request: a fresh nonce, a message naming our domain, the signature."""
    nonce = client.get(NONCE_URL).json()["nonce"]
    now = datetime.now(UTC)
    fields = {
        "domain": "127.0.0.1:8001",
        "address": wallet.address,
        "statement": "Sign in to Hokusai.",
        "uri": "http://127.0.0.1:8001/api/v1",
        "chain_id": 1,
        "nonce": nonce,
        "issued_at": now,
        "expiration_time": now + timedelta(minutes=5),
        **overrides,
    }
    text = ethereum.build_siwe_message(**fields)
    signature = wallet.sign_message(encode_defunct(text=text)).signature
    return {
        "HTTP_X_ETH_ADDRESS": wallet.address,
        "HTTP_X_ETH_SIGNATURE": "0x" + bytes(signature).hex(),
        "HTTP_X_ETH_MESSAGE": ethereum.message_header(text),
    }


def code_of(response) -> str:
    assert response["Content-Type"] == "application/problem+json"
    return response.json()["code"]


def test_nonce_endpoint_gives_what_a_client_needs_to_build_the_message(client):
    body = client.get(NONCE_URL).json()
    assert len(body["nonce"]) == 32 and body["nonce"].isalnum()
    assert body["domain"] == "127.0.0.1:8001"
    assert body["chain_ids"] == [1]
    assert client.get(NONCE_URL).json()["nonce"] != body["nonce"]
    assert client.get(NONCE_URL)["Cache-Control"] == "no-store"


def test_a_new_address_signs_in_with_the_default_scopes(client, wallet):
    response = client.get(KEYS_URL, **signed_headers(client, wallet))
    assert response.status_code == 200
    identity = EthIdentity.objects.get(address=wallet.address)
    assert identity.scopes == ["models:read", "predict", "contributions:write"]
    assert response["X-RateLimit-Limit"] == "600"


def test_a_replayed_header_set_is_refused(client, wallet):
    headers = signed_headers(client, wallet)
    assert client.get(KEYS_URL, **headers).status_code == 200
    replay = client.get(KEYS_URL, **headers)
    assert replay.status_code == 401
    assert code_of(replay) == "eth_nonce_invalid"
    assert replay["WWW-Authenticate"] == 'Bearer realm="hokusai"'


def test_a_nonce_we_never_issued_is_refused(client, wallet):
    headers = signed_headers(client, wallet, nonce="abcdef0123456789")
    assert code_of(client.get(KEYS_URL, **headers)) == "eth_nonce_invalid"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"domain": "evil.example"}, "eth_domain_mismatch"),
        ({"uri": "https://evil.example/api"}, "eth_uri_mismatch"),
        ({"chain_id": 5}, "eth_chain_not_allowed"),
        (
            {"issued_at": -timedelta(minutes=5), "expiration_time": -timedelta(seconds=1)},
            "eth_message_expired",
        ),
        ({"not_before": timedelta(minutes=3)}, "eth_message_not_yet_valid"),
        ({"expiration_time": None}, "eth_expiration_required"),
    ],
)
def test_a_message_with_wrong_claims_is_refused(client, wallet, overrides, code):
    # Times are given from now, taken when the test runs (not when the module was collected).
    now = datetime.now(UTC)
    claims = {
        name: now + value if isinstance(value, timedelta) else value
        for name, value in overrides.items()
    }
    response = client.get(KEYS_URL, **signed_headers(client, wallet, **claims))
    assert response.status_code == 401
    assert code_of(response) == code
    assert not EthIdentity.objects.exists()


def test_a_message_signed_by_another_wallet_is_refused(client, wallet):
    headers = signed_headers(client, Account.create(), address=wallet.address)
    headers["HTTP_X_ETH_ADDRESS"] = wallet.address
    response = client.get(KEYS_URL, **headers)
    assert code_of(response) == "eth_address_mismatch"


def test_a_refused_signature_does_not_burn_the_nonce(client, wallet):
    headers = signed_headers(client, wallet)
    signature = headers["HTTP_X_ETH_SIGNATURE"]
    # Change a byte of r (not v: v 0/1 and 27/28 are the same signature).
    flipped = "00" if signature[10:12] != "00" else "01"
    tampered = {**headers, "HTTP_X_ETH_SIGNATURE": signature[:10] + flipped + signature[12:]}
    assert client.get(KEYS_URL, **tampered).status_code == 401
    assert client.get(KEYS_URL, **headers).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_X_ETH_ADDRESS": "0x" + "ab" * 20},
        {
            "HTTP_X_ETH_ADDRESS": "0xnothex",
            "HTTP_X_ETH_SIGNATURE": "0x00",
            "HTTP_X_ETH_MESSAGE": "!!",
        },
        {
            "HTTP_X_ETH_ADDRESS": "0x" + "ab" * 20,
            "HTTP_X_ETH_SIGNATURE": "0x" + "00" * 65,
            "HTTP_X_ETH_MESSAGE": "A" * 100_000,
        },
        {
            "HTTP_X_ETH_ADDRESS": "0x" + "ab" * 20,
            "HTTP_X_ETH_SIGNATURE": "0x" + "00" * 65,
            "HTTP_X_ETH_MESSAGE": "bm90IGEgU0lXRSBtZXNzYWdl",
        },
    ],
    ids=["incomplete", "bad-hex", "huge", "not-siwe"],
)
def test_malformed_headers_are_a_401_in_the_error_shape(client, headers):
    response = client.get(KEYS_URL, **headers)
    assert response.status_code == 401
    assert code_of(response).startswith("eth_")


def test_closed_registration_refuses_unknown_addresses(client, wallet, settings):
    settings.HOKUSAI_ETH_OPEN_REGISTRATION = False
    response = client.get(KEYS_URL, **signed_headers(client, wallet))
    assert response.status_code == 403
    assert code_of(response) == "eth_identity_not_registered"
    assert not EthIdentity.objects.exists()


def test_a_deactivated_identity_is_refused(client, wallet):
    EthIdentity.objects.create(address=wallet.address, scopes=["models:read"], is_active=False)
    response = client.get(KEYS_URL, **signed_headers(client, wallet))
    assert response.status_code == 403
    assert code_of(response) == "eth_identity_inactive"


def test_a_wallet_can_issue_itself_a_key_with_at_most_its_scopes(client, wallet):
    created = client.post(
        KEYS_URL,
        {"name": "my script", "scopes": ["predict"]},
        content_type="application/json",
        **signed_headers(client, wallet),
    )
    assert created.status_code == 201
    api_key = ApiKey.objects.get(pk=created.json()["id"])
    assert api_key.owner_identity.address == wallet.address
    assert api_key.owner_user is None
    assert created.json()["owner"] == wallet.address

    escalation = client.post(
        KEYS_URL,
        {"name": "root", "scopes": ["admin"]},
        content_type="application/json",
        **signed_headers(client, wallet),
    )
    assert escalation.status_code == 403
    assert code_of(escalation) == "scope_not_held"


def test_the_wallets_key_authenticates_without_signing_and_keeps_its_scopes(client, wallet):
    key = client.post(
        KEYS_URL,
        {"name": "script", "scopes": ["models:read"]},
        content_type="application/json",
        **signed_headers(client, wallet),
    ).json()["key"]
    listed = client.get(KEYS_URL, **signed_headers(client, wallet)).json()["results"]
    assert [item["name"] for item in listed] == ["script"]
    # The key itself lacks keys:manage, so it may not list keys: scopes hold for keys too.
    assert code_of(client.get(KEYS_URL, HTTP_AUTHORIZATION=f"Bearer {key}")) == (
        "insufficient_scope"
    )


def test_each_address_has_its_own_rate_limit(client, wallet):
    EthIdentity.objects.create(address=wallet.address, scopes=[], rate_limit_per_minute=1)
    assert client.get(KEYS_URL, **signed_headers(client, wallet)).status_code == 200
    refused = client.get(KEYS_URL, **signed_headers(client, wallet))
    assert refused.status_code == 429
    assert code_of(refused) == "rate_limited"
    other = Account.create()
    assert client.get(KEYS_URL, **signed_headers(client, other)).status_code == 200


def test_a_sign_in_records_when_the_address_was_last_seen_at_most_once_a_minute(
    client, wallet, django_assert_num_queries
):
    assert client.get(KEYS_URL, **signed_headers(client, wallet)).status_code == 200
    identity = EthIdentity.objects.get(address=wallet.address)
    first_seen = identity.last_seen_at
    assert first_seen is not None
    assert client.get(KEYS_URL, **signed_headers(client, wallet)).status_code == 200
    identity.refresh_from_db()
    assert identity.last_seen_at == first_seen

    EthIdentity.objects.filter(pk=identity.pk).update(
        last_seen_at=first_seen - timedelta(minutes=2)
    )
    assert client.get(KEYS_URL, **signed_headers(client, wallet)).status_code == 200
    identity.refresh_from_db()
    assert identity.last_seen_at > first_seen
