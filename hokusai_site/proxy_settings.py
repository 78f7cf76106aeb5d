"""Settings of the MLflow proxy server (`manage.py mlflow_proxy_server`, registry.wsgi): the
project's settings, answering only the proxy's routes (registry.proxy), through only the
middleware they use. The proxy shares two cores with MLflow itself, so every bit of CPU it spends
per request is throughput MLflow loses (bench/registry.py (b)). Left out: django-prometheus
(its per-view counters; the access log still has every request), the common, CSRF, messages and
static files middleware. Credentials, scopes, rate limits and error shape are the web server's.
"""

from hokusai_site.prediction_settings import MIDDLEWARE as PREDICTION_SERVER_MIDDLEWARE
from hokusai_site.settings import *  # noqa: F403

ROOT_URLCONF = "hokusai_site.proxy_urls"

# The prediction server's (request id and access log, body limit, rate-limit headers, security,
# CORS and framing headers), and the admin session with which staff use the MLflow UI
# (registry.proxy checks the origin of its unsafe requests in place of a CSRF token).
MIDDLEWARE = [
    *PREDICTION_SERVER_MIDDLEWARE,
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

# The admin stays installed (its models are the project's), but this server shows no admin page
# (a login goes to the web server's), so the middleware its pages need is not here; the proxy
# checks the origin of a session's unsafe requests itself (security.W003: no CSRF middleware).
SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410", "security.W003"]
