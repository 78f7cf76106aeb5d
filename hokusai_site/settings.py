"""Hokusai settings: every value comes from the environment (django-environ; `.env` optional).

`.env.example` lists each variable with its default. A missing or malformed value stops start-up
with an `ImproperlyConfigured` error that names the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from authkeys.scopes import ALL_SCOPES

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# An explicit ENV_FILE lets tests and deployments choose the file; the default is optional.
environ.Env.read_env(os.environ.get("ENV_FILE", BASE_DIR / ".env"))


def _typed(name: str, cast, default):
    """Read one variable; a value that does not parse stops start-up naming the variable."""
    try:
        return env.get_value(name, cast=cast, default=default)
    except ImproperlyConfigured:
        raise
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            f"{name} has an invalid value {os.environ.get(name)!r}: {exc}"
        ) from exc


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _typed(name, str, default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


_BOOLEANS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in _BOOLEANS:
        raise ImproperlyConfigured(f"{name} must be true or false; got {os.environ[name]!r}")
    return _BOOLEANS[value]


def _positive(name: str, cast, default):
    value = _typed(name, cast, default)
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be greater than zero; got {value!r}")
    return value


def _url(name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = _typed(name, str, default).strip()
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ImproperlyConfigured(
            f"{name} must be a URL with scheme {' or '.join(schemes)}; got {value!r}"
        )
    return value


# --- Environment -------------------------------------------------------------------------------
ENVIRONMENT = _choice(
    "ENVIRONMENT", "development", ("development", "test", "staging", "production")
)
IS_PRODUCTION = ENVIRONMENT in ("staging", "production")
DEBUG = _bool("DEBUG", not IS_PRODUCTION and ENVIRONMENT != "test")
VAR_DIR = Path(_typed("HOKUSAI_VAR_DIR", str, str(BASE_DIR / "var"))).resolve()

if IS_PRODUCTION and "SECRET_KEY" not in os.environ:
    raise ImproperlyConfigured("SECRET_KEY must be set when ENVIRONMENT is staging or production")
SECRET_KEY = _typed("SECRET_KEY", str, "dev-only-insecure-secret-key-change-me-0123456789abcdef")
if IS_PRODUCTION and (len(SECRET_KEY) < 50 or SECRET_KEY.startswith("dev-only")):
    raise ImproperlyConfigured("SECRET_KEY must be a random string of at least 50 characters")

ALLOWED_HOSTS = _typed(
    "ALLOWED_HOSTS",
    list,
    [] if IS_PRODUCTION else ["localhost", "127.0.0.1", "[::1]", "testserver"],
)
if IS_PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS must be set when ENVIRONMENT is staging or production"
    )
CSRF_TRUSTED_ORIGINS = _typed("CSRF_TRUSTED_ORIGINS", list, [])

# --- Applications ------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "corsheaders",
    "django_prometheus",
    "hokusai_site.apps.HokusaiSiteConfig",
    "registry.apps.RegistryConfig",
    "authkeys.apps.AuthkeysConfig",
    "webhooks.apps.WebhooksConfig",
    "inference.apps.InferenceConfig",
]

# Every app's migrations live under the top-level `migrations` package.
MIGRATION_MODULES = {
    "hokusai_site": "migrations.hokusai_site",
    "registry": "migrations.registry",
    "authkeys": "migrations.authkeys",
    "webhooks": "migrations.webhooks",
    "inference": "migrations.inference",
}

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "hokusai_site.middleware.RequestIdMiddleware",
    "hokusai_site.middleware.RequestBodyLimitMiddleware",
    "authkeys.throttling.RateLimitHeadersMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "hokusai_site.urls"
WSGI_APPLICATION = "hokusai_site.wsgi.application"
ASGI_APPLICATION = "hokusai_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "hokusai_site.context_processors.environment",
            ],
        },
    },
]

# --- Database: ours and MLflow's tables in one database ----------------------------------------
# Without DATABASE_URL the embedded default is a SQLite file under var/.
_default_database_url = f"sqlite:///{VAR_DIR / 'hokusai.sqlite3'}"
try:
    DATABASES = {"default": env.db_url("DATABASE_URL", default=_default_database_url)}
except (ImproperlyConfigured, ValueError, KeyError) as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from exc
if DATABASES["default"].get("ENGINE") not in (
    "django.db.backends.postgresql",
    "django.db.backends.sqlite3",
):
    raise ImproperlyConfigured("DATABASE_URL must be a postgres:// or sqlite:// URL")
DATABASES["default"]["CONN_MAX_AGE"] = _typed("DATABASE_CONN_MAX_AGE", int, 60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets the web server, the worker and MLflow read while one of them writes.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
else:
    DATABASES["default"].setdefault("OPTIONS", {})
    # A dead database must fail a request (and the health check) quickly, not hang it.
    DATABASES["default"]["OPTIONS"].setdefault(
        "connect_timeout", _positive("DATABASE_CONNECT_TIMEOUT", int, 3)
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, rate limits and Celery broker ----------------------------------------------
REDIS_URL = _typed("REDIS_URL", str, "").strip()
if REDIS_URL:
    REDIS_URL = _url("REDIS_URL", REDIS_URL, ("redis", "rediss", "unix"))
    CACHES = {
        "default": {
            "BACKEND": "hokusai_site.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "hokusai",
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    # Embedded default: a cache table in the database (created by `manage.py migrate`).
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "hokusai_cache",
        }
    }

# --- Celery ------------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL or f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}"
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# At-least-once: a task is acknowledged after it ran, and re-queued if its worker dies.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if REDIS_URL:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A task not acknowledged within this long is handed to another worker: longer than
        # any delay a message waits in a worker (webhooks.delivery.ETA_LIMIT) plus its run.
        "visibility_timeout": 3600,
        # Publishing fails at once while Redis is down (kombu would try for seconds, holding
        # the request that committed); what was not queued, the webhook sweep queues later.
        "max_retries": 0,
    }
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    "flush-api-key-usage": {"task": "authkeys.flush_usage", "schedule": 60.0},
    "republish-api-key-changes": {"task": "authkeys.republish_key_changes", "schedule": 60.0},
    "sync-registry": {"task": "registry.sync", "schedule": 300.0},
    "prune-prediction-log": {"task": "inference.prune_prediction_log", "schedule": 86400.0},
}
# How often each worker records that it is alive (the health check reads these rows).
CELERY_WORKER_HEARTBEAT_SECONDS = _positive("CELERY_WORKER_HEARTBEAT_SECONDS", float, 10.0)

# --- MLflow ------------------------------------------------------------------------------------
MLFLOW_TRACKING_URI = _url("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000", ("http", "https"))
MLFLOW_ARTIFACTS_DESTINATION = _typed(
    "MLFLOW_ARTIFACTS_DESTINATION", str, str(VAR_DIR / "mlartifacts")
)
MLFLOW_FALLBACK_IP = _typed("MLFLOW_FALLBACK_IP", str, "").strip()
if MLFLOW_FALLBACK_IP:
    try:
        ipaddress.ip_address(MLFLOW_FALLBACK_IP)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"MLFLOW_FALLBACK_IP must be an IP address; got {MLFLOW_FALLBACK_IP!r}"
        ) from exc
DNS_CACHE_TTL = _positive("DNS_CACHE_TTL", int, 300)
# The MLflow proxy (registry/proxy.py): an unreachable MLflow is a 502 within the connect
# timeout (which also bounds each write of a body); a silent one is a 504 after the read timeout.
MLFLOW_PROXY_CONNECT_TIMEOUT = _positive("MLFLOW_PROXY_CONNECT_TIMEOUT", float, 5.0)
MLFLOW_PROXY_READ_TIMEOUT = _positive("MLFLOW_PROXY_READ_TIMEOUT", float, 300.0)
# Artifact uploads through the proxy stream; larger ones get 413 (chunked ones once they pass it).
MLFLOW_PROXY_MAX_UPLOAD_BYTES = _positive("MLFLOW_PROXY_MAX_UPLOAD_BYTES", int, 5 * 1024**3)

# --- Health checks -----------------------------------------------------------------------------
# Each dependency check gives up after this long, so a hung dependency never hangs /api/v1/health.
HEALTH_CHECK_TIMEOUT_SECONDS = _positive("HEALTH_CHECK_TIMEOUT_SECONDS", float, 2.0)

# --- Data contributions ------------------------------------------------------------------------
# Where they are kept is the "contributions" entry of STORAGES (the Storage section below).
# A larger file or set of rows gets 413, before it is read when Content-Length says so.
HOKUSAI_CONTRIBUTION_MAX_BYTES = _positive("HOKUSAI_CONTRIBUTION_MAX_BYTES", int, 100 * 1024**2)
# JSON rows are parsed in memory: at most this many, in a body within MAX_REQUEST_BODY_BYTES.
HOKUSAI_CONTRIBUTION_MAX_ROWS = _positive("HOKUSAI_CONTRIBUTION_MAX_ROWS", int, 10_000)
# One S3 request (a part of a large upload) gives up after this long: 503, nothing recorded.
HOKUSAI_CONTRIBUTION_STORAGE_TIMEOUT_SECONDS = _positive(
    "HOKUSAI_CONTRIBUTION_STORAGE_TIMEOUT_SECONDS", float, 30.0
)

# --- Registry ----------------------------------------------------------------------------------
# One REST call to MLflow (registration, sync) gives up after this long: 503, nothing written.
MLFLOW_REQUEST_TIMEOUT_SECONDS = _positive("MLFLOW_REQUEST_TIMEOUT_SECONDS", float, 10.0)
# How long a registration waits for MLflow to report the new version READY.
HOKUSAI_REGISTRATION_READY_TIMEOUT_SECONDS = _positive(
    "HOKUSAI_REGISTRATION_READY_TIMEOUT_SECONDS", float, 60.0
)

# --- Webhooks ----------------------------------------------------------------------------------
# WEBHOOK_TIMEOUT, WEBHOOK_URL, WEBHOOK_SECRET and ENABLE_REDIS_FALLBACK mean what they did in
# the original platform.
# Each of connect and read gives up after this long; the attempt then counts as failed.
WEBHOOK_TIMEOUT = _positive("WEBHOOK_TIMEOUT", float, 10.0)
# One receiver configured here rather than through the API; gets every event type.
WEBHOOK_URL = _typed("WEBHOOK_URL", str, "").strip()
WEBHOOK_SECRET = _typed("WEBHOOK_SECRET", str, "")
if WEBHOOK_URL and not WEBHOOK_SECRET:
    raise ImproperlyConfigured("WEBHOOK_SECRET must be set when WEBHOOK_URL is")


def _schedule(name: str, default: str) -> tuple[float, ...]:
    value = _typed(name, str, default)
    try:
        delays = tuple(float(part) for part in value.split(","))
    except ValueError:
        delays = ()
    if not delays or any(not 0 < delay < 7 * 86400 for delay in delays):
        raise ImproperlyConfigured(
            f"{name} must be comma-separated delays in seconds, each above 0 and below a week; "
            f"got {value!r}"
        )
    return delays


# Seconds to wait before each retry; after the last one fails the delivery is `failed`.
WEBHOOK_RETRY_SCHEDULE = _schedule(
    "WEBHOOK_RETRY_SCHEDULE", "2,4,8,16,32,300,1800,7200,18000,36000,36000"
)
# Each wait is stretched by up to this fraction at random, so retries of many deliveries spread.
WEBHOOK_RETRY_JITTER = _typed("WEBHOOK_RETRY_JITTER", float, 0.1)
if not 0 <= WEBHOOK_RETRY_JITTER <= 1:
    raise ImproperlyConfigured(f"WEBHOOK_RETRY_JITTER must be 0 to 1; got {WEBHOOK_RETRY_JITTER}")
# Circuit breaker per endpoint: this many failures in a row hold its deliveries back for the
# cooldown, then one probe decides; an endpoint failing for DISABLE_AFTER is disabled.
WEBHOOK_BREAKER_FAILURES = _positive("WEBHOOK_BREAKER_FAILURES", int, 5)
WEBHOOK_BREAKER_COOLDOWN_SECONDS = _positive("WEBHOOK_BREAKER_COOLDOWN_SECONDS", float, 60.0)
WEBHOOK_DISABLE_AFTER_SECONDS = _positive("WEBHOOK_DISABLE_AFTER_SECONDS", float, 5 * 86400.0)
# After a secret rotation the old secret signs too, for this long.
WEBHOOK_SECRET_GRACE_SECONDS = _positive("WEBHOOK_SECRET_GRACE_SECONDS", float, 86400.0)
# Beat's sweep: how often it runs, and how long a due delivery may wait in the queue before the
# sweep enqueues it again (its message was lost: broker flushed, Redis down at commit, …).
WEBHOOK_SWEEP_INTERVAL_SECONDS = _positive("WEBHOOK_SWEEP_INTERVAL_SECONDS", float, 5.0)
WEBHOOK_REQUEUE_AFTER_SECONDS = _positive("WEBHOOK_REQUEUE_AFTER_SECONDS", float, 60.0)
CELERY_BEAT_SCHEDULE["sweep-webhook-deliveries"] = {
    "task": "webhooks.sweep",
    "schedule": WEBHOOK_SWEEP_INTERVAL_SECONDS,
}
# Receivers on loopback, private, link-local or reserved addresses: for development and tests.
HOKUSAI_WEBHOOK_ALLOW_PRIVATE = _bool(
    "HOKUSAI_WEBHOOK_ALLOW_PRIVATE", ENVIRONMENT in ("development", "test")
)
# Also push every event onto Redis (hokusai:model_ready_queue), as the original platform did.
ENABLE_REDIS_FALLBACK = _bool("ENABLE_REDIS_FALLBACK", False)
if ENABLE_REDIS_FALLBACK and not REDIS_URL:
    raise ImproperlyConfigured("ENABLE_REDIS_FALLBACK needs REDIS_URL")

# --- Inference ---------------------------------------------------------------------------------
# A load or a prediction that runs longer than this is answered 504.
MODEL_SERVING_PREDICTION_TIMEOUT_SECONDS = _positive(
    "MODEL_SERVING_PREDICTION_TIMEOUT_SECONDS", float, 30.0
)
# Loaded models kept per serving process: at most this many, and within this much memory.
MODEL_SERVING_CACHE_MAX_MODELS = _positive("MODEL_SERVING_CACHE_MAX_MODELS", int, 8)
MODEL_SERVING_CACHE_MAX_MEMORY_MB = _positive("MODEL_SERVING_CACHE_MAX_MEMORY_MB", int, 2048)
# Model ids loaded when a serving process starts, comma-separated.
MODEL_SERVING_PRELOAD = [
    item.strip().lower() for item in _typed("MODEL_SERVING_PRELOAD", list, []) if item.strip()
]
# Larger prediction bodies are 413 before they are read; so are more rows than this.
MODEL_SERVING_MAX_BODY_BYTES = _positive("MODEL_SERVING_MAX_BODY_BYTES", int, 10 * 1024**2)
MODEL_SERVING_MAX_ROWS = _positive("MODEL_SERVING_MAX_ROWS", int, 10_000)
# Which version serves (champion alias, else the latest READY) is looked up again after this long.
MODEL_SERVING_VERSION_CACHE_SECONDS = _positive("MODEL_SERVING_VERSION_CACHE_SECONDS", float, 5.0)
# A model that failed to load is tried again after this long, not on every request.
MODEL_SERVING_LOAD_RETRY_SECONDS = _positive("MODEL_SERVING_LOAD_RETRY_SECONDS", float, 30.0)
# The prediction log (inference.prediction_log) keeps each input's SHA-256; the input itself
# only when this is on, since it may hold personal data.
HOKUSAI_LOG_PREDICTION_PAYLOADS = _bool("HOKUSAI_LOG_PREDICTION_PAYLOADS", False)
# Each process writes its rows in the background this often (and at once when 500 are waiting),
# so a request never waits for them.
PREDICTION_LOG_FLUSH_SECONDS = _positive("PREDICTION_LOG_FLUSH_SECONDS", float, 1.0)
# While the database is down rows wait in memory, at most this many per process; then the
# oldest go.
PREDICTION_LOG_MAX_PENDING = _positive("PREDICTION_LOG_MAX_PENDING", int, 100_000)
# Rows older than this are deleted by the daily prune task.
PREDICTION_LOG_RETENTION_DAYS = _positive("PREDICTION_LOG_RETENTION_DAYS", int, 30)

# --- Storage: S3 through django-storages when a bucket is set, local files otherwise -----------
AWS_REGION = _typed("AWS_REGION", str, "us-east-1")
AWS_STORAGE_BUCKET_NAME = _typed("AWS_STORAGE_BUCKET_NAME", str, "").strip()
if AWS_STORAGE_BUCKET_NAME and not re.fullmatch(
    r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", AWS_STORAGE_BUCKET_NAME
):
    raise ImproperlyConfigured(
        "AWS_STORAGE_BUCKET_NAME must be an S3 bucket name (3 to 63 lower-case letters, digits, "
        f"dots and hyphens); got {AWS_STORAGE_BUCKET_NAME!r}"
    )
# An S3-compatible server instead of AWS (MinIO, Ceph, a test server).
AWS_S3_ENDPOINT_URL = (
    _url("AWS_S3_ENDPOINT_URL", "", ("http", "https"))
    if os.environ.get("AWS_S3_ENDPOINT_URL")
    else None
)
AWS_S3_REGION_NAME = AWS_REGION
AWS_DEFAULT_ACL = None
AWS_S3_FILE_OVERWRITE = False
MEDIA_ROOT = VAR_DIR / "media"
MEDIA_URL = "/media/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_URL = "/static/"
if AWS_STORAGE_BUCKET_NAME:
    # Imported only here: botocore takes ~0.2 s to import and only S3 deployments use it.
    from botocore.config import Config

    _contributions_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": AWS_S3_ENDPOINT_URL,
            "region_name": AWS_REGION,
            # Each upload gets a key of its own, so no existence check (a HEAD) before writing.
            "file_overwrite": True,
            "client_config": Config(
                connect_timeout=HOKUSAI_CONTRIBUTION_STORAGE_TIMEOUT_SECONDS,
                read_timeout=HOKUSAI_CONTRIBUTION_STORAGE_TIMEOUT_SECONDS,
                retries={"mode": "standard", "max_attempts": 3},
                # S3-compatible servers answer path-style requests without DNS for each bucket.
                s3={"addressing_style": "path" if AWS_S3_ENDPOINT_URL else "auto"},
            ),
        },
    }
else:
    _contributions_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT},
    }
STORAGES = {
    "default": (
        {"BACKEND": "storages.backends.s3.S3Storage"}
        if AWS_STORAGE_BUCKET_NAME
        else {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    ),
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if IS_PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
    # Data contributions (registry/contributions.py), under contributions/<model_id>/.
    "contributions": _contributions_storage,
}
# Dev and tests serve admin assets straight from the apps, so no collectstatic is needed.
WHITENOISE_USE_FINDERS = not IS_PRODUCTION
if not IS_PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# --- Request bodies ----------------------------------------------------------------------------
# JSON API bodies above this size get 413 before they are read. Streaming routes (the MLflow
# proxy, contribution uploads) declare their own limits.
MAX_REQUEST_BODY_BYTES = _positive("MAX_REQUEST_BODY_BYTES", int, 5 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- API keys and callers ---------------------------------------------------------------------
# Keyed hash for stored API keys; changing it invalidates every key, so it is its own setting.
HOKUSAI_API_KEY_PEPPER = _typed("HOKUSAI_API_KEY_PEPPER", str, SECRET_KEY)
HOKUSAI_API_KEY_CACHE_SECONDS = _positive("HOKUSAI_API_KEY_CACHE_SECONDS", int, 300)
# Each process also keeps the facts of keys it served, checked against Redis on every request;
# this bounds how long a change Redis never heard of can go unseen (authkeys.gate).
HOKUSAI_API_KEY_LOCAL_CACHE_SECONDS = _positive("HOKUSAI_API_KEY_LOCAL_CACHE_SECONDS", int, 60)
HOKUSAI_API_KEY_DEFAULT_RATE_LIMIT = _positive("HOKUSAI_API_KEY_DEFAULT_RATE_LIMIT", int, 600)
# How long a rotated-away secret keeps working (seconds; 0 = it stops at once).
HOKUSAI_KEY_ROTATION_GRACE = _typed("HOKUSAI_KEY_ROTATION_GRACE", int, 24 * 3600)
if HOKUSAI_KEY_ROTATION_GRACE < 0:
    raise ImproperlyConfigured("HOKUSAI_KEY_ROTATION_GRACE must be 0 or more seconds")
# Requests per minute for anonymous callers, and failed credentials, per client IP.
HOKUSAI_ANONYMOUS_RATE_LIMIT = _positive("HOKUSAI_ANONYMOUS_RATE_LIMIT", int, 60)
HOKUSAI_AUTH_FAILURE_RATE_LIMIT = _positive("HOKUSAI_AUTH_FAILURE_RATE_LIMIT", int, 30)
RATE_LIMIT_WINDOW_SECONDS = _positive("RATE_LIMIT_WINDOW_SECONDS", int, 60)
# A dead Redis must cost a request little: limits then fail open (health says degraded).
RATE_LIMIT_REDIS_TIMEOUT_SECONDS = _positive("RATE_LIMIT_REDIS_TIMEOUT_SECONDS", float, 0.25)
# --- Sign-In with Ethereum (EIP-4361) ---------------------------------------------------------
# The messages we accept name our host as their domain and one of our URLs as their URI.
HOKUSAI_SIWE_DOMAIN = _typed(
    "HOKUSAI_SIWE_DOMAIN", str, ALLOWED_HOSTS[0] if IS_PRODUCTION else "127.0.0.1:8001"
)
HOKUSAI_SIWE_URI_PREFIXES = _typed(
    "HOKUSAI_SIWE_URI_PREFIXES",
    list,
    [f"https://{HOKUSAI_SIWE_DOMAIN}"]
    + ([] if IS_PRODUCTION else [f"http://{HOKUSAI_SIWE_DOMAIN}"]),
)
try:
    HOKUSAI_SIWE_CHAIN_IDS = frozenset(
        int(c) for c in _typed("HOKUSAI_SIWE_CHAIN_IDS", list, ["1"])
    )
except ValueError as exc:
    raise ImproperlyConfigured(f"HOKUSAI_SIWE_CHAIN_IDS must be integers: {exc}") from exc
HOKUSAI_SIWE_NONCE_TTL = _positive("HOKUSAI_SIWE_NONCE_TTL", int, 300)
HOKUSAI_SIWE_MAX_CLOCK_SKEW = _positive("HOKUSAI_SIWE_MAX_CLOCK_SKEW", int, 60)
HOKUSAI_SIWE_MAX_AGE = _positive("HOKUSAI_SIWE_MAX_AGE", int, 600)
# Addresses seen for the first time get these scopes, or are refused when registration is closed.
# Smart-contract wallets (EIP-1271) are verified by an eth_call through this JSON-RPC node, for
# messages on the node's chain; unset, their signatures are refused with a 401 that says why.
ETH_RPC_URL = _url("ETH_RPC_URL", "", ("http", "https")) if os.environ.get("ETH_RPC_URL") else ""
ETH_RPC_TIMEOUT_SECONDS = _positive("ETH_RPC_TIMEOUT_SECONDS", float, 5.0)
HOKUSAI_ETH_OPEN_REGISTRATION = _bool("HOKUSAI_ETH_OPEN_REGISTRATION", True)
HOKUSAI_ETH_DEFAULT_SCOPES = _typed(
    "HOKUSAI_ETH_DEFAULT_SCOPES", list, ["models:read", "predict", "contributions:write"]
)
if set(HOKUSAI_ETH_DEFAULT_SCOPES) - set(ALL_SCOPES):
    raise ImproperlyConfigured(
        f"HOKUSAI_ETH_DEFAULT_SCOPES names unknown scopes; known: {', '.join(ALL_SCOPES)}"
    )

# Proxies in front of us that append to X-Forwarded-For (0: use the socket's address).
TRUSTED_PROXY_COUNT = _typed("TRUSTED_PROXY_COUNT", int, 0)

# --- Auth, i18n --------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- API ---------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": (
        ["rest_framework.renderers.JSONRenderer", "rest_framework.renderers.BrowsableAPIRenderer"]
        if DEBUG
        else ["rest_framework.renderers.JSONRenderer"]
    ),
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    # The first class answers 401s with its WWW-Authenticate challenge.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "authkeys.authentication.ApiKeyAuthentication",
        "authkeys.authentication.EthSignatureAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["authkeys.throttling.CallerRateThrottle"],
    "DEFAULT_PAGINATION_CLASS": "hokusai_site.pagination.BoundedPageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "hokusai_site.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "hokusai_site.openapi.HokusaiAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Hokusai API",
    "DESCRIPTION": "Model registry and serving platform on MLflow.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # `status` is a field of models and of deliveries with different choices: name each enum.
    "ENUM_NAME_OVERRIDES": {"WebhookDeliveryStatusEnum": "webhooks.models.Delivery.STATUS_CHOICES"},
}

# --- CORS --------------------------------------------------------------------------------------
CORS_ALLOWED_ORIGINS = _typed("CORS_ALLOWED_ORIGINS", list, [])
CORS_URLS_REGEX = r"^/api/.*$"
CORS_EXPOSE_HEADERS = [
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
]

# --- Security (production) ---------------------------------------------------------------------
if IS_PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = _bool("SECURE_SSL_REDIRECT", True)
    # Load balancers probe plain HTTP inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^health$", r"^api/v1/health$"]
    SECURE_HSTS_SECONDS = _typed("SECURE_HSTS_SECONDS", int, 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- Build info --------------------------------------------------------------------------------
HOKUSAI_VERSION = "0.1.0"
BUILD_COMMIT = _typed("BUILD_COMMIT", str, "")

# --- Logging: JSON in production, readable lines in development --------------------------------
LOG_LEVEL = _choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOG_FORMAT = _choice("LOG_FORMAT", "json" if IS_PRODUCTION else "text", ("json", "text"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "hokusai_site.request_id.RequestIdFilter"}},
    "formatters": {
        "text": {
            "format": "%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        # Our own request log line replaces django.server's and gunicorn's access logs.
        "django.server": {"handlers": [], "level": "ERROR", "propagate": False},
    },
}
