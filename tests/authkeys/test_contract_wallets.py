"""Smart-contract wallets (EIP-1271), verified through a JSON-RPC node.

The chain is outside the machine, so a small JSON-RPC server on loopback stands in for the
node: it answers eth_chainId, and eth_call of isValidSignature(bytes32, bytes) for "contract
wallets" that accept the signatures of all their owners (65 bytes each, concatenated), like a
Safe. The wallets' owners are keys made and signed locally with eth-account.
"""

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from eth_abi import decode
from eth_account import Account
from eth_keys import keys as eth_keys
from eth_utils import to_checksum_address

from authkeys import contract_wallets, ethereum
from authkeys.models import EthIdentity

pytestmark = pytest.mark.django_db

KEYS_URL = "/api/v1/keys"
NONCE_URL = "/api/v1/auth/eth/nonce"
MAGIC = "1626ba7e"
REVERTING_SIGNATURE = b"\xee" * 65


def recover(message_hash: bytes, signature: bytes) -> str:
    v = signature[64] - 27 if signature[64] >= 27 else signature[64]
    key = eth_keys.Signature(signature[:64] + bytes([v]))
    return key.recover_public_key_from_msg_hash(message_hash).to_checksum_address()


class StandInNode:
    """A JSON-RPC node on loopback holding contract wallets: address -> owner addresses."""

    def __init__(self, chain_id: int = 1) -> None:
        self.chain_id = chain_id
        self.wallets: dict[str, list[str]] = {}
        self.calls: list[str] = []
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                node.calls.append(request["method"])
                body = json.dumps({"jsonrpc": "2.0", "id": request["id"], **node.answer(request)})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, request: dict) -> dict:
        if request["method"] == "eth_chainId":
            return {"result": hex(self.chain_id)}
        assert request["method"] == "eth_call"
        call = request["params"][0]
        owners = self.wallets.get(to_checksum_address(call["to"]))
        if owners is None:
            return {"result": "0x"}  # no code at the address
        data = bytes.fromhex(call["data"][2:])
        assert data[:4].hex() == MAGIC
        message_hash, signature = decode(["bytes32", "bytes"], data[4:])
        if signature == REVERTING_SIGNATURE:
            return {"error": {"code": 3, "message": "execution reverted", "data": "0x"}}
        chunks = [signature[i : i + 65] for i in range(0, len(signature), 65)]
        signers = [recover(message_hash, chunk) for chunk in chunks if len(chunk) == 65]
        accepted = sorted(signers) == sorted(owners)
        return {"result": "0x" + (MAGIC if accepted else "ffffffff") + "00" * 28}

    def add_wallet(self, *owners) -> str:
        address = Account.create().address  # any address will do for the contract
        self.wallets[address] = [owner.address for owner in owners]
        return address

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def node(settings):
    node = StandInNode()
    settings.ETH_RPC_URL = node.url
    contract_wallets.verifier.cache_clear()
    yield node
    node.close()
    contract_wallets.verifier.cache_clear()


@pytest.fixture
def no_node(settings):
    settings.ETH_RPC_URL = ""
    contract_wallets.verifier.cache_clear()
    yield
    contract_wallets.verifier.cache_clear()


def wallet_headers(client, address: str, *signers, chain_id: int = 1, signature=None) -> dict:
    """Headers signed for a contract wallet: each owner signs the message's EIP-191 hash."""
    nonce = client.get(NONCE_URL).json()["nonce"]
    now = datetime.now(UTC)
    text = ethereum.build_siwe_message(
        domain="127.0.0.1:8001",
        address=address,
        uri="http://127.0.0.1:8001/api/v1",
        chain_id=chain_id,
        nonce=nonce,
        issued_at=now,
        expiration_time=now + timedelta(minutes=5),
    )
    message_hash = ethereum.eip191_hash(text)
    if signature is None:
        signature = b"".join(
            bytes(Account.unsafe_sign_hash(message_hash, signer.key).signature)
            for signer in signers
        )
    return {
        "HTTP_X_ETH_ADDRESS": address,
        "HTTP_X_ETH_SIGNATURE": "0x" + signature.hex(),
        "HTTP_X_ETH_MESSAGE": ethereum.message_header(text),
    }


def problem(response) -> tuple[int, str, str]:
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    return body["status"], body["code"], body["detail"]


def test_a_contract_wallet_signs_in_through_its_owner(client, node):
    owner = Account.create()
    wallet = node.add_wallet(owner)
    response = client.get(KEYS_URL, **wallet_headers(client, wallet, owner))
    assert response.status_code == 200
    assert EthIdentity.objects.filter(address=wallet).exists()
    assert node.calls == ["eth_chainId", "eth_call"]


def test_a_multi_owner_wallet_accepts_a_longer_signature(client, node):
    owners = [Account.create(), Account.create()]
    wallet = node.add_wallet(*owners)
    headers = wallet_headers(client, wallet, *owners)
    assert len(headers["HTTP_X_ETH_SIGNATURE"]) == 2 + 4 * 65
    assert client.get(KEYS_URL, **headers).status_code == 200


def test_a_signature_the_contract_does_not_accept_is_refused(client, node):
    wallet = node.add_wallet(Account.create())
    status, code, detail = problem(
        client.get(KEYS_URL, **wallet_headers(client, wallet, Account.create()))
    )
    assert (status, code) == (401, "eth_address_mismatch")
    assert "EIP-1271" in detail
    assert not EthIdentity.objects.exists()


def test_a_reverting_contract_is_a_refusal(client, node):
    wallet = node.add_wallet(Account.create())
    headers = wallet_headers(client, wallet, signature=REVERTING_SIGNATURE)
    assert problem(client.get(KEYS_URL, **headers))[:2] == (401, "eth_address_mismatch")


def test_an_address_without_a_contract_is_refused(client, node):
    status, code, _ = problem(
        client.get(KEYS_URL, **wallet_headers(client, Account.create().address, Account.create()))
    )
    assert (status, code) == (401, "eth_address_mismatch")


def test_a_message_on_another_chain_than_the_nodes_is_refused(client, node, settings):
    settings.HOKUSAI_SIWE_CHAIN_IDS = frozenset({1, 137})
    owner = Account.create()
    wallet = node.add_wallet(owner)
    status, code, detail = problem(
        client.get(KEYS_URL, **wallet_headers(client, wallet, owner, chain_id=137))
    )
    assert (status, code) == (401, "eth_contract_wallet_chain")
    assert "chain 1 only" in detail
    assert "eth_call" not in node.calls


def test_replaying_a_contract_wallets_headers_is_refused(client, node):
    owner = Account.create()
    wallet = node.add_wallet(owner)
    headers = wallet_headers(client, wallet, owner)
    assert client.get(KEYS_URL, **headers).status_code == 200
    assert problem(client.get(KEYS_URL, **headers))[:2] == (401, "eth_nonce_invalid")


def test_a_node_that_is_down_is_503_and_the_nonce_stays_usable(client, node):
    owner = Account.create()
    wallet = node.add_wallet(owner)
    headers = wallet_headers(client, wallet, owner)
    node.close()
    status, code, _ = problem(client.get(KEYS_URL, **headers))
    assert (status, code) == (503, "eth_rpc_unavailable")
    assert not EthIdentity.objects.exists()

    restarted = StandInNode()
    restarted.wallets = node.wallets
    contract_wallets.verifier.cache_clear()
    from django.conf import settings

    settings.ETH_RPC_URL = restarted.url
    try:
        assert client.get(KEYS_URL, **headers).status_code == 200  # same nonce, now consumed
    finally:
        restarted.close()


def test_without_a_node_contract_wallets_get_a_401_that_says_why(client, no_node):
    owner = Account.create()
    wallet = Account.create().address
    status, code, detail = problem(client.get(KEYS_URL, **wallet_headers(client, wallet, owner)))
    assert (status, code) == (401, "eth_address_mismatch")
    assert "ETH_RPC_URL" in detail

    longer = wallet_headers(client, wallet, owner, Account.create())
    status, code, detail = problem(client.get(KEYS_URL, **longer))
    assert (status, code) == (401, "eth_signature_invalid")
    assert "ETH_RPC_URL" in detail


def test_ordinary_accounts_never_reach_the_node(client, node):
    account = Account.create()
    from tests.authkeys.test_eth_auth import signed_headers

    assert client.get(KEYS_URL, **signed_headers(client, account)).status_code == 200
    assert node.calls == []
