"""Smart-contract wallets (EIP-1271): asking the wallet's contract, through an Ethereum JSON-RPC
node (ETH_RPC_URL), whether it accepts a signature of a message hash.

The contract's `isValidSignature(bytes32 hash, bytes signature)` answers the magic value
0x1626ba7e for yes; anything else, a revert, or no code at the address means no. The node serves
one chain: messages naming another chain are refused rather than checked against the wrong one.
"""

from __future__ import annotations

import functools
import threading

import requests
from django.conf import settings
from eth_abi import encode
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3Exception

from authkeys.ethereum import EthAuthError
from hokusai_site.errors import ApplicationError

# bytes4(keccak256("isValidSignature(bytes32,bytes)")), which is also the answer meaning yes.
IS_VALID_SIGNATURE = bytes.fromhex("1626ba7e")


def rpc_unavailable() -> ApplicationError:
    return ApplicationError(
        "eth_rpc_unavailable",
        "The Ethereum node that verifies smart-contract wallets did not answer; try again.",
        status=503,
    )


class ContractWalletVerifier:
    """An `ethereum.ContractWalletCheck` backed by a JSON-RPC node; thread-safe."""

    def __init__(self, url: str, *, timeout: float) -> None:
        # No retries: a slow node must cost a request one timeout, not several. No middleware:
        # web3's validation would ask the node for its chain id again on every call.
        self.web3 = Web3(
            Web3.HTTPProvider(
                url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
            ),
            middleware=[],
        )
        self._chain_id: int | None = None
        self._lock = threading.Lock()

    def chain_id(self) -> int:
        """The node's chain, asked once."""
        with self._lock:
            if self._chain_id is None:
                self._chain_id = self._rpc(lambda: self.web3.eth.chain_id)
            return self._chain_id

    def __call__(self, address: str, message_hash: bytes, signature: bytes, chain_id: int) -> bool:
        node_chain = self.chain_id()
        if chain_id != node_chain:
            raise EthAuthError(
                "eth_contract_wallet_chain",
                f"Smart-contract wallets are verified on chain {node_chain} only; the message "
                f"names chain {chain_id}.",
            )
        call = {
            "to": address,
            "data": IS_VALID_SIGNATURE + encode(["bytes32", "bytes"], [message_hash, signature]),
        }
        try:
            answer = self._rpc(lambda: self.web3.eth.call(call))
        except ContractLogicError:
            return False  # the contract reverted: it does not accept the signature
        # The bytes4 answer comes left-aligned in a 32-byte word.
        return bytes(answer[:4]) == IS_VALID_SIGNATURE

    @staticmethod
    def _rpc(request):
        try:
            return request()
        except ContractLogicError:
            raise
        except (requests.RequestException, Web3Exception, OSError, ValueError) as exc:
            raise rpc_unavailable() from exc


@functools.cache
def verifier() -> ContractWalletVerifier | None:
    """The process's verifier, or None when ETH_RPC_URL is not set."""
    if not settings.ETH_RPC_URL:
        return None
    return ContractWalletVerifier(settings.ETH_RPC_URL, timeout=settings.ETH_RPC_TIMEOUT_SECONDS)
