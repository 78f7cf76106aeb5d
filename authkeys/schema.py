"""How the OpenAPI schema describes our authentication."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeySchemeExtension(OpenApiAuthenticationExtension):
    target_class = "authkeys.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API key (hk_live_… / hk_test_…) as `Authorization: Bearer <key>`; "
                "`Authorization: ApiKey <key>`, `X-API-Key: <key>` and Basic with the key as "
                "password are accepted too. Never in the query string."
            ),
        }


class EthSignatureSchemeExtension(OpenApiAuthenticationExtension):
    target_class = "authkeys.authentication.EthSignatureAuthentication"
    name = "EthereumSignature"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-ETH-Signature",
            "description": (
                "Sign-In with Ethereum: X-ETH-Address, X-ETH-Signature (0x + 65 bytes hex) and "
                "X-ETH-Message (base64 of an EIP-4361 message whose nonce came from "
                "GET /api/v1/auth/eth/nonce; each nonce signs in once)."
            ),
        }
