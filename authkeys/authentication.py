"""DRF authentication by API key, shaped like DRF's TokenAuthentication: None when the request
carries no key, an error (401 with WWW-Authenticate) when it carries a bad one."""

from __future__ import annotations

import base64
import binascii

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication

from authkeys import keys, selectors
from authkeys.principals import Caller
from authkeys.services import key_digest
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
            except (binascii.Error, UnicodeDecodeError):
                raise MalformedCredentials("Basic credentials are not valid base64") from None
            password = decoded.partition(":")[2]
            # Basic with something other than one of our keys is not ours to judge.
            return password if password.startswith("hk_") else None
        return None
    return meta.get("HTTP_X_API_KEY")


def _key_in_query(request) -> bool:
    return any(
        keys.looks_like_key(value)
        for name in QUERY_KEY_NAMES
        for value in request.GET.getlist(name)
    )


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        request = request._request
        if _key_in_query(request):
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
        info = selectors.key_info(prefix=parsed.prefix, digest=key_digest(parsed.key))
        if info is None:
            raise refuse_credentials(request, "api_key_unknown", "API key is not recognised")
        refusal = info.refusal(timezone.now())
        if refusal is not None:
            raise refuse_credentials(request, *refusal)
        caller = Caller(
            kind="api_key",
            label=info.prefix,
            scopes=info.scopes,
            user_id=info.owner_user_id,
            identity_id=info.owner_identity_id,
            key_id=info.key_id,
            is_staff=info.owner_is_staff,
        )
        return caller, info

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="hokusai"'
