"""DRF authentication by API key, shaped like DRF's TokenAuthentication: None when the request
carries no key, an error (401 with WWW-Authenticate) when it carries a bad one."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import unquote_plus

from django.conf import settings
from django.http import QueryDict
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from authkeys import contract_wallets, ethereum, gate, keys, services
from authkeys.principals import Caller
from authkeys.ratelimit import RateLimitResult
from authkeys.selectors import KeyInfo
from authkeys.throttling import refuse_credentials

KEY_SCHEMES = ("bearer", "apikey")
# Query parameters a client might put a key in; keys there leak into every log on the way.
QUERY_KEY_NAMES = ("api_key", "apikey", "key", "token", "access_token")


class MalformedCredentials(ValueError):
    pass


def key_from_headers(meta: dict) -> str | None:
    """The key the request presents, or None when it presents none in any of our forms.

    `Authorization: Bearer <key>` (what the MLflow client sends from MLFLOW_TRACKING_TOKEN),
    `Authorization: ApiKey <key>`, `Authorization: Basic base64(user:<key>)` (MLflow's
    username/password form), or `X-API-Key: <key>`.
    """
    header = meta.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        if scheme in KEY_SCHEMES:
            return credentials.strip()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            # binascii.Error (bad base64) and non-ASCII input are both ValueErrors.
            except (ValueError, UnicodeDecodeError):
                raise MalformedCredentials("Basic credentials are not valid base64") from None
            password = decoded.partition(":")[2]
            # Basic with something other than one of our keys is not ours to judge.
            return password if password.startswith("hk_") else None
        return None
    return meta.get("HTTP_X_API_KEY")


def key_in_query(query: str) -> bool:
    """Whether the query string carries something shaped like a key, under a name we refuse."""
    # Every key starts with hk_: a query string without it, decoded, holds none, and that is
    # known without parsing a QueryDict (the common case; ~0.07 ms on the MLflow proxy's path).
    if not query or "hk_" not in unquote_plus(query):
        return False
    parameters = QueryDict(query)
    return any(
        keys.looks_like_key(value) for name in QUERY_KEY_NAMES for value in parameters.getlist(name)
    )


@dataclass(frozen=True)
class ApiKeyCredentials:
    """request.auth for a request with an API key: the key's facts and the rate limit it was
    already counted against (in the same Redis round trip as the key check)."""

    info: KeyInfo
    rate_limit_result: RateLimitResult


# Where a server that checked the request's key before Django (registry.proxy_fast_path) leaves
# its KeyAdmission: a WSGI environ key, which no client can set (their headers are HTTP_*).
ADMISSION_ENVIRON_KEY = "hokusai.api_key_admission"


@dataclass(frozen=True)
class KeyAdmission:
    """gate.admit's answer for the key with this digest, already counted."""

    digest: str
    admission: gate.Admission


def caller_for_key(info: KeyInfo) -> Caller:
    return Caller(
        kind="api_key",
        label=info.prefix,
        scopes=info.scopes,
        user_id=info.owner_user_id,
        identity_id=info.owner_identity_id,
        key_id=info.key_id,
        is_staff=info.owner_is_staff,
        key_owner=info.owner_label,
    )


def _admit(meta: dict, parsed: keys.ParsedKey, ip: str | None) -> gate.Admission:
    """gate.admit, unless the server already admitted this key for this request: a request
    is counted once."""
    digest = services.key_digest(parsed.key)
    admitted = meta.get(ADMISSION_ENVIRON_KEY)
    if admitted is not None and admitted.digest == digest:
        return admitted.admission
    return gate.admit(prefix=parsed.prefix, digest=digest, ip=ip)


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        request = request._request
        if key_in_query(request.META.get("QUERY_STRING", "")):
            raise refuse_credentials(
                request,
                "api_key_in_query",
                "API keys are not accepted in the query string; send them in a header",
            )
        try:
            raw = key_from_headers(request.META)
            if raw is None:
                return None
            parsed = keys.parse(raw)
        except (keys.MalformedKey, MalformedCredentials):
            raise refuse_credentials(request, "api_key_malformed", "API key is malformed") from None
        admission = _admit(request.META, parsed, request.client_ip)
        info = admission.info
        if info is None:
            raise refuse_credentials(request, "api_key_unknown", "API key is not recognised")
        if admission.rate_limit is None:
            raise refuse_credentials(request, *info.refusal(timezone.now()))
        # On every response, a refusal by permission included: the request was counted.
        request.rate_limit = admission.rate_limit
        return caller_for_key(info), ApiKeyCredentials(info, admission.rate_limit)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="hokusai"'


@dataclass(frozen=True)
class EthSignIn:
    """request.auth for a request signed with an EIP-4361 message."""

    identity_id: int
    address: str
    rate_limit_per_minute: int
    nonce: str

    @property
    def rate_limit_subject(self) -> str:
        return f"eth:{self.address}"


ETH_HEADERS = ("HTTP_X_ETH_ADDRESS", "HTTP_X_ETH_SIGNATURE", "HTTP_X_ETH_MESSAGE")


class EthSignatureAuthentication(BaseAuthentication):
    """X-ETH-Address, X-ETH-Signature and X-ETH-Message (base64 of an EIP-4361 message whose
    nonce came from /api/v1/auth/eth/nonce). Each nonce signs in once: a replay is refused."""

    def authenticate(self, request):
        request = request._request
        values = [request.META.get(name) for name in ETH_HEADERS]
        if not any(values):
            return None
        if not all(values):
            raise refuse_credentials(
                request,
                "eth_header_malformed",
                "X-ETH-Address, X-ETH-Signature and X-ETH-Message go together",
            )
        try:
            message = ethereum.verify_siwe(
                address_header=values[0],
                signature_header=values[1],
                message_header=values[2],
                expected_domain=settings.HOKUSAI_SIWE_DOMAIN,
                expected_uri_prefixes=tuple(settings.HOKUSAI_SIWE_URI_PREFIXES),
                allowed_chain_ids=settings.HOKUSAI_SIWE_CHAIN_IDS,
                now=timezone.now(),
                max_clock_skew=timedelta(seconds=settings.HOKUSAI_SIWE_MAX_CLOCK_SKEW),
                max_age=timedelta(seconds=settings.HOKUSAI_SIWE_MAX_AGE),
                contract_wallet_check=contract_wallets.verifier(),
            )
        except ethereum.EthAuthError as exc:
            raise refuse_credentials(request, exc.code, exc.detail) from None
        # Consumed only after the signature checks out, so nobody can burn a nonce they did
        # not sign.
        if not services.eth_nonce_consume(message.nonce):
            raise refuse_credentials(
                request,
                "eth_nonce_invalid",
                "The nonce is unknown, expired or already used: get a new one and sign again",
            )
        identity = services.eth_identity_for_sign_in(message.address)
        if identity is None:
            raise exceptions.PermissionDenied(
                detail="This address is not registered", code="eth_identity_not_registered"
            )
        if not identity.is_active:
            raise exceptions.PermissionDenied(
                detail="This address has been deactivated", code="eth_identity_inactive"
            )
        services.eth_identity_seen(identity)
        caller = Caller(
            kind="eth",
            label=identity.address,
            scopes=frozenset(identity.scopes),
            identity_id=identity.pk,
        )
        sign_in = EthSignIn(
            identity_id=identity.pk,
            address=identity.address,
            rate_limit_per_minute=identity.rate_limit_per_minute
            or settings.HOKUSAI_API_KEY_DEFAULT_RATE_LIMIT,
            nonce=message.nonce,
        )
        return caller, sign_in

    def authenticate_header(self, request) -> str:
        return 'SIWE realm="hokusai"'
