"""Settings of the prediction server (`manage.py prediction_server`, inference.wsgi): the
project's settings, answering only the routes that server is for, through only the middleware
they use. Each piece left out costs CPU on every request there, and the prediction server is
CPU-bound (bench/inference.py): django-prometheus ~0.14 ms, the session, CSRF, messages, static
files and common middleware ~0.18 ms together, a shorter URLconf ~0.04 ms.

Predictions are counted by their own metrics (inference.metrics), and the prediction API takes
API keys and Ethereum signatures, not staff sessions (DESIGN.md: sessions are for the admin and
the MLflow UI).
"""

from hokusai_site.settings import *  # noqa: F403
from hokusai_site.settings import REST_FRAMEWORK

ROOT_URLCONF = "hokusai_site.prediction_urls"

MIDDLEWARE = [
    "hokusai_site.middleware.RequestIdMiddleware",
    "hokusai_site.middleware.RequestBodyLimitMiddleware",
    "authkeys.throttling.RateLimitHeadersMiddleware",
    # The same security, CORS and framing headers as every other API response.
    "django.middleware.security.SecurityMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "authkeys.authentication.ApiKeyAuthentication",
        "authkeys.authentication.EthSignatureAuthentication",
    ],
}

# The admin stays installed (its models are the project's), but this server shows no admin page,
# so the middleware its pages need is not here; and it takes no cookie credentials, so there is
# no cross-site request to forge (security.W003: no CSRF middleware).
SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410", "security.W003"]
