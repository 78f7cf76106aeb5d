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
