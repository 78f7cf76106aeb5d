"""What authentication costs per request: a trivial endpoint with (a) no authentication, (b) our
API key found in the cache, (c) our API key missing the cache, (d) a Sign-In with Ethereum
signature and (e) djangorestframework-api-key's HasAPIKey, in one run on one server.

The trivial endpoints exist only in this benchmark: it writes a settings module (the production
settings plus the peer's app) and a URLconf (ours plus /bench/*) into its temp dir and points
gunicorn at them with DJANGO_SETTINGS_MODULE and PYTHONPATH; the product's routes are untouched.
Everything runs on loopback: a dedicated PostgreSQL database, Redis db 14, one gunicorn with the
config file's worker model, loaded by wrk at the same concurrency for every variant.

    .venv/bin/python bench/auth.py [--duration 5] [--rounds 3] [--variants none,key-hit,peer]

Targets (the issue): (b) adds at most 0.3 ms per request over (a), and at most a third of what
(e) adds. (b) runs with our rate limit, as in production, and again without it as (b'), since the
peer has none. A last, in-process pass calls (a), (b), (b') and (e) through Django's WSGI handler
in one thread, without server or client: the code path's own CPU time, with far less noise.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import redis
import urllib3
from _common import (
    BUSY_MACHINE_PERCENT,
    GUNICORN,
    INHERITED_ENV,
    POSTGRES_ADMIN,
    REDIS_HOST_PORT,
    REPO_ROOT,
    CpuWatch,
    Service,
    Services,
    WrkResult,
    base_env,
    chosen_variants,
    database_url,
    duration_ms,
    ensure_database,
    format_table,
    free_port,
    group_usage,
    gunicorn_worker_model,
    load_arguments,
    log_tail,
    machine_facts,
    parse_wrk,
    python_json,
    require_wrk,
    server_log_notes,
    shell_line,
    step,
    stop_on_sigterm,
    wait_for_http,
    wait_until_idle,
)

BENCH_DATABASE = "hokusai_bench_auth"
BENCH_REDIS_URL = f"redis://{REDIS_HOST_PORT}/14"
# Every key and the Ethereum identity get this rate limit, so the limiter runs (one Redis call
# per request, as in production) but never refuses.
HUGE_RATE_LIMIT = 10**9
# Django's cache key for a key's facts: KEY_PREFIX "hokusai", version 1, authkeys.selectors.
KEY_INFO_PATTERN = "hokusai:1:authkeys:key:*"
OWNER = "bench-auth"
TARGET_ADDED_MS = 0.3
TARGET_SHARE_OF_PEER = 1 / 3

SETTINGS_MODULE = '''\
"""Written by bench/auth.py: the production settings, plus the peer's app and the bench routes."""
from hokusai_site.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "rest_framework_api_key"]  # noqa: F405
ROOT_URLCONF = "bench_auth_urls"
'''

URLS_MODULE = '''\
"""Written by bench/auth.py: our URLconf plus one trivial view behind each way in."""
from django.urls import include, path
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_api_key.permissions import HasAPIKey


class Trivial(APIView):
    def get(self, request):
        return Response({"ok": True})


urlpatterns = [
    # (a) nothing: no authenticator, no permission, no rate limit.
    path("bench/none", Trivial.as_view(
        authentication_classes=[], permission_classes=[AllowAny], throttle_classes=[])),
    # (b) (c) (d) our defaults: every authenticator and our rate limit.
    path("bench/key", Trivial.as_view(permission_classes=[IsAuthenticated])),
    path("bench/eth", Trivial.as_view(permission_classes=[IsAuthenticated])),
    # (b') our authenticators without our rate limit: what the peer does.
    path("bench/key-nolimit", Trivial.as_view(
        permission_classes=[IsAuthenticated], throttle_classes=[])),
    # (e) the peer: a permission class that looks the key up on every request.
    path("bench/peer", Trivial.as_view(
        authentication_classes=[], permission_classes=[HasAPIKey], throttle_classes=[])),
    path("", include("hokusai_site.urls")),
]
'''

SETUP_SCRIPT = '''\
"""Written by bench/auth.py: the keys and the Ethereum identity the benchmark uses."""
import json
import sys

import django

django.setup()

from django.contrib.auth import get_user_model
from django.db import transaction
from rest_framework_api_key.models import APIKey

from authkeys import keys
from authkeys.models import ApiKey, ApiKeySecret, EthIdentity
from authkeys.principals import SYSTEM
from authkeys.services import api_key_create, key_digest

OWNER = "bench-auth"
out_path, miss_keys, address, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
user, _ = get_user_model().objects.get_or_create(username=OWNER)
# Keys of earlier runs were peppered with their run's SECRET_KEY and can no longer be used.
ApiKey.objects.filter(owner_user=user).delete()
APIKey.objects.filter(name__startswith=OWNER).delete()
EthIdentity.objects.filter(label=OWNER).delete()

_, hit = api_key_create(
    actor=SYSTEM, name=f"{OWNER} hit", scopes=["models:read"], owner_user_id=user.pk,
    rate_limit_per_minute=rate,
)
# The cache-miss pool: the rows api_key_create writes (minus its audit entry), in bulk.
with transaction.atomic():
    rows = ApiKey.objects.bulk_create(
        [ApiKey(name=f"{OWNER} miss {i}", owner_user=user, scopes=["models:read"],
                rate_limit_per_minute=rate) for i in range(miss_keys)],
        batch_size=2000,
    )
    generated = [keys.generate("live") for _ in rows]
    ApiKeySecret.objects.bulk_create(
        [ApiKeySecret(api_key=row, prefix=g.prefix, key_hash=key_digest(g.key))
         for row, g in zip(rows, generated)],
        batch_size=2000,
    )
_, peer = APIKey.objects.create_key(name=f"{OWNER} peer")
EthIdentity.objects.create(
    address=address, label=OWNER, scopes=["models:read"], rate_limit_per_minute=rate
)
with open(out_path, "w") as out:
    json.dump({"hit": hit, "miss": [g.key for g in generated], "peer": peer}, out)
print(f"1 key (api_key_create), {len(generated)} miss-pool keys, 1 peer key, identity {address}")
'''

# Each request carries the headers of one line of the items file ("Name: value" fields separated
# by tabs; an empty line is no header). Lines are dealt to wrk's threads in turn. "cycle" repeats
# the lines; "once" sends each line once and then stops the thread (its last request goes to
# /health, whose answer wrk no longer counts).
WRK_SCRIPT = """\
local counter = 0
function setup(thread)
  thread:set("thread_number", counter)
  counter = counter + 1
end

local items, count, index, mode, path = {}, 0, 0, "cycle", "/"
function init(args)
  local threads = tonumber(args[2])
  mode, path = args[3], args[4]
  local n = 0
  for line in io.lines(args[1]) do
    if mode == "cycle" or n % threads == thread_number then
      local headers = {}
      for field in string.gmatch(line, "[^\\t]+") do
        local name, value = string.match(field, "^([^:]+): (.*)$")
        headers[name] = value
      end
      count = count + 1
      items[count] = wrk.format("GET", path, headers)
    end
    n = n + 1
  end
end

function request()
  index = index + 1
  if index > count then
    if mode == "cycle" then
      index = 1
    else
      wrk.thread:stop()
      return wrk.format("GET", "/health")
    end
  end
  return items[index]
end
"""


INPROC_SCRIPT = '''\
"""Written by bench/auth.py: each trivial view called in this one thread through Django's WSGI
handler (every middleware; no server, no client socket): the code path's own CPU time."""
import json
import resource
import sys

import django

django.setup()

from django.core.handlers.wsgi import WSGIHandler
from django.test import RequestFactory

keys_path, rounds, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(keys_path) as file:
    keys = json.load(file)
bearer = {"HTTP_AUTHORIZATION": "Bearer " + keys["hit"]}
cases = {
    "none": ("/bench/none", {}),
    "key-hit": ("/bench/key", bearer),
    "key-hit-nolimit": ("/bench/key-nolimit", bearer),
    "peer": ("/bench/peer", {"HTTP_AUTHORIZATION": "Api-Key " + keys["peer"]}),
}
handler = WSGIHandler()
factory = RequestFactory()


def start_response(status, headers, exc_info=None):
    if not status.startswith("200"):
        raise SystemExit(f"answered {status}")


def call(environ):
    response = handler(dict(environ), start_response)
    b"".join(response)
    response.close()  # request_finished, as under gunicorn


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


results = {name: [] for name in cases}
for _ in range(rounds):
    for name, (path, headers) in cases.items():
        environ = factory.get(path, HTTP_HOST="127.0.0.1", REMOTE_ADDR="127.0.0.1", **headers)
        environ = environ.environ
        for _ in range(100):
            call(environ)
        before = cpu_seconds()
        for _ in range(requests):
            call(environ)
        results[name].append(1000 * (cpu_seconds() - before) / requests)
print(json.dumps(results))
'''
INPROC_ROUNDS = 5
INPROC_REQUESTS = 1000


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    path: str
    credentials: str  # none | hit | miss | eth | peer


VARIANTS = [
    Variant("none", "(a) no auth", "/bench/none", "none"),
    Variant("key-hit", "(b) key, cache hit", "/bench/key", "hit"),
    Variant("key-hit-nolimit", "(b') key, cache hit, no rate limit", "/bench/key-nolimit", "hit"),
    Variant("key-miss", "(c) key, cache miss", "/bench/key", "miss"),
    Variant("eth", "(d) Ethereum signature", "/bench/eth", "eth"),
    Variant("peer", "(e) peer HasAPIKey", "/bench/peer", "peer"),
]


@dataclass(frozen=True)
class Measurement:
    variant: str
    round: int
    result: WrkResult
    elapsed_s: float
    other_cpu: float
    server_cpu_ms: float  # gunicorn, all processes, per request
    backing_cpu_ms: float  # our PostgreSQL backends + redis-server, per request
    db_xacts: float  # PostgreSQL transactions per request (warm-up and run together)
    redis_hits: float  # keyspace hits per request (the whole Redis server)
    redis_misses: float
    notes: tuple[str, ...]


def parse_args() -> argparse.Namespace:
    parser = load_arguments(
        __doc__.split("\n\n")[0], [variant.name for variant in VARIANTS], duration=5
    )
    parser.add_argument(
        "--miss-keys",
        type=int,
        default=20_000,
        help="keys in the cache-miss pool; each is sent once per measured (c) run",
    )
    args = parser.parse_args()
    if args.miss_keys < args.connections:
        parser.error("--miss-keys must be at least --connections")
    args.variants = chosen_variants(parser, args, VARIANTS)
    return args


# --- The server and its database ----------------------------------------------------------------


def shared_settings(workdir: Path, port: int) -> dict[str, str]:
    var_dir = workdir / "var"
    return {
        "ENVIRONMENT": "production",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": "warning",
        "DATABASE_URL": database_url(BENCH_DATABASE),
        "REDIS_URL": BENCH_REDIS_URL,
        "HOKUSAI_VAR_DIR": str(var_dir),
        "ENV_FILE": "/dev/null",
        "TMPDIR": str(var_dir / "tmp"),
        # The bench's settings module and URLconf, found through PYTHONPATH.
        "DJANGO_SETTINGS_MODULE": "bench_auth_settings",
        "PYTHONPATH": str(workdir),
        # SIWE messages name the address we serve on (no TLS on loopback).
        "HOKUSAI_SIWE_DOMAIN": f"127.0.0.1:{port}",
        "HOKUSAI_SIWE_URI_PREFIXES": f"http://127.0.0.1:{port}",
        # Fetching thousands of nonces is anonymous; the per-IP limit would refuse most.
        "HOKUSAI_ANONYMOUS_RATE_LIMIT": str(HUGE_RATE_LIMIT),
        "HOKUSAI_BIND": f"127.0.0.1:{port}",
        # One server serves every variant and round (hundreds of thousands of requests):
        # recycling workers mid-run would charge a worker's start-up to whichever run it hit.
        "GUNICORN_MAX_REQUESTS": "0",
    }


def write_modules(workdir: Path) -> None:
    (workdir / "bench_auth_settings.py").write_text(SETTINGS_MODULE)
    (workdir / "bench_auth_urls.py").write_text(URLS_MODULE)
    (workdir / "bench_auth_setup.py").write_text(SETUP_SCRIPT)
    (workdir / "bench_auth.lua").write_text(WRK_SCRIPT)
    (workdir / "bench_auth_inproc.py").write_text(INPROC_SCRIPT)
    for name in ("var/tmp", "var/static", "items"):
        (workdir / name).mkdir(parents=True, exist_ok=True)


def run_to_end(services: Services, name: str, command: list[str], env: dict[str, str]) -> str:
    service = services.start(name, command, env)
    try:
        code = service.process.wait(timeout=900)
    finally:
        services.stop(service)
    if code != 0:
        raise RuntimeError(f"{name} failed:\n{log_tail(service.log_path)}")
    return log_tail(service.log_path, lines=1)


def setup_commands(workdir: Path, miss_keys: int, address: str) -> list[list[str]]:
    return [
        ["python", "manage.py", "migrate"],
        [
            "python",
            "-m",
            "bench_auth_setup",
            str(workdir / "keys.json"),
            str(miss_keys),
            address,
            str(HUGE_RATE_LIMIT),
        ],
    ]


# --- Measuring from outside: PostgreSQL, Redis, /proc -------------------------------------------


class Backing:
    """PostgreSQL's and Redis's view of the run: transactions in our database, keyspace hits and
    misses, and the CPU time of our database backends and of redis-server."""

    def __init__(self) -> None:
        self.pg = psycopg2.connect(connect_timeout=3, **POSTGRES_ADMIN)
        self.pg.autocommit = True
        self.redis = redis.Redis.from_url(BENCH_REDIS_URL)
        self.redis_pid = int(self.redis.info("server")["process_id"])

    def close(self) -> None:
        self.pg.close()
        self.redis.close()

    def _query(self, sql: str) -> list[tuple]:
        with self.pg.cursor() as cursor:
            cursor.execute(sql, {"db": BENCH_DATABASE})
            return cursor.fetchall()

    def db_transactions(self) -> int:
        rows = self._query(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %(db)s"
        )
        return int(rows[0][0])

    def flush_db_stats(self) -> None:
        """A backend reports its counts at most once a second, or 10 s after going idle; ending
        the server's connections makes them report now (each worker thread reconnects on its
        next query, Django's CONN_HEALTH_CHECKS, in the next warm-up)."""
        self._query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %(db)s AND backend_type = 'client backend'"
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not self._query("SELECT 1 FROM pg_stat_activity WHERE datname = %(db)s"):
                break
            time.sleep(0.1)
        time.sleep(0.3)

    def cpu_ticks(self) -> dict[int, int]:
        pids = [
            row[0] for row in self._query("SELECT pid FROM pg_stat_activity WHERE datname = %(db)s")
        ]
        return {pid: ticks for pid in [*pids, self.redis_pid] if (ticks := _ticks(pid)) >= 0}

    def keyspace(self) -> tuple[int, int]:
        stats = self.redis.info("stats")
        return int(stats["keyspace_hits"]), int(stats["keyspace_misses"])

    def key_info_entries(self) -> list[bytes]:
        return list(self.redis.scan_iter(match=KEY_INFO_PATTERN, count=1000))

    def forget_bench_state(self) -> None:
        """At the end: what our requests left in the bench's Redis db (key facts, usage counts,
        last-used markers, unused SIWE nonces; rate-limit state expires within milliseconds)."""
        self.forget_key_info()
        for pattern in ("authkeys:usage:*", "authkeys:last-used:*", "hokusai:1:authkeys:siwe-*"):
            entries = list(self.redis.scan_iter(match=pattern, count=1000))
            for start in range(0, len(entries), 1000):
                self.redis.delete(*entries[start : start + 1000])

    def forget_key_info(self) -> int:
        """Deletes every cached key fact in the bench's Redis db: the next use of a key misses."""
        entries = self.key_info_entries()
        for start in range(0, len(entries), 1000):
            self.redis.delete(*entries[start : start + 1000])
        return len(entries)


def _ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    # Processes that started during the run count from zero; ones that ended are lost.
    ticks = sum(value - before.get(pid, 0) for pid, value in after.items())
    return ticks / os.sysconf("SC_CLK_TCK")


# --- Credentials --------------------------------------------------------------------------------

_http = urllib3.PoolManager(retries=False, maxsize=16)


def key_digest(key: str, pepper: str) -> str:
    """authkeys.keys.digest with the run's pepper (HOKUSAI_API_KEY_PEPPER defaults to
    SECRET_KEY): where the server caches this key's facts."""
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()


class EthSigner:
    """Signs fresh EIP-4361 messages, one per server-issued nonce, as a wallet would."""

    def __init__(self, base_url: str, port: int) -> None:
        from eth_account import Account

        self.account = Account.create()
        self.base_url = base_url
        self.domain = f"127.0.0.1:{port}"
        self.uri = f"http://127.0.0.1:{port}/bench/eth"

    def nonce(self) -> str:
        response = _http.request("GET", f"{self.base_url}/api/v1/auth/eth/nonce", timeout=10)
        if response.status != 200:
            raise RuntimeError(f"nonce endpoint answered {response.status}: {response.data!r}")
        body = json.loads(response.data)
        if body["domain"] != self.domain:
            raise RuntimeError(f"server expects domain {body['domain']}, we sign {self.domain}")
        return body["nonce"]

    def header_lines(self, count: int) -> list[str]:
        from eth_account import Account
        from eth_account.messages import encode_defunct

        with ThreadPoolExecutor(max_workers=8) as pool:
            nonces = list(pool.map(lambda _: self.nonce(), range(count)))
        now = datetime.now(UTC).replace(microsecond=0)
        lines = []
        for nonce in nonces:
            text = siwe_message(
                domain=self.domain,
                address=self.account.address,
                uri=self.uri,
                nonce=nonce,
                issued_at=now,
                expiration_time=now + timedelta(minutes=10),
            )
            signed = Account.sign_message(encode_defunct(text=text), self.account.key)
            encoded = base64.b64encode(text.encode()).decode()
            lines.append(
                f"X-ETH-Address: {self.account.address}\t"
                f"X-ETH-Signature: 0x{bytes(signed.signature).hex()}\t"
                f"X-ETH-Message: {encoded}"
            )
        return lines


def siwe_message(**fields: Any) -> str:
    """The project's own builder (authkeys.ethereum is plain Python: no Django)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from authkeys.ethereum import build_siwe_message

    return build_siwe_message(chain_id=1, **fields)


@dataclass
class Credentials:
    hit: str
    miss: list[str]
    peer: str
    signer: EthSigner
    pepper: str


def header_line(variant: Variant, creds: Credentials) -> str:
    if variant.credentials == "hit":
        return f"Authorization: Bearer {creds.hit}"
    if variant.credentials == "peer":
        return f"Authorization: Api-Key {creds.peer}"
    return ""


def headers_of(line: str) -> dict[str, str]:
    return dict(field.split(": ", 1) for field in line.split("\t") if field)


def get(base_url: str, path: str, line: str = "") -> tuple[int, bytes]:
    response = _http.request("GET", base_url + path, headers=headers_of(line), timeout=10)
    return response.status, response.data


def tampered(key: str) -> str:
    return key[:-1] + ("y" if key.endswith("x") else "x")


def preflight(base_url: str, variants: Sequence[Variant], creds: Credentials) -> list[str]:
    """Each variant answers 200 with its credentials, and the guarded routes refuse without."""
    checks = []
    for variant in variants:
        if variant.credentials == "miss":
            line = f"Authorization: Bearer {creds.miss[0]}"
        elif variant.credentials == "eth":
            line = creds.signer.header_lines(1)[0]
        else:
            line = header_line(variant, creds)
        status, body = get(base_url, variant.path, line)
        checks.append((f"{variant.label}: GET {variant.path}", status, 200, body))
    refusals = [
        ("/bench/key", "", 401),
        ("/bench/key", f"Authorization: Bearer {tampered(creds.hit)}", 401),
        ("/bench/peer", "", 403),
        ("/bench/peer", f"Authorization: Api-Key {tampered(creds.peer)}", 403),
    ]
    for path, line, expected in refusals:
        status, body = get(base_url, path, line)
        what = "a wrong key" if line else "no credentials"
        checks.append((f"GET {path} with {what}", status, expected, body))
    failed = [
        f"{name}: {status}, expected {want}: {body[:200]!r}"
        for name, status, want, body in checks
        if status != want
    ]
    if failed:
        raise RuntimeError("pre-flight failed:\n  " + "\n  ".join(failed))
    return [f"{name} -> {status}" for name, status, _, _ in checks]


# --- wrk ---------------------------------------------------------------------------------------


def wrk_command(
    args: argparse.Namespace, url: str, items: Path, mode: str, path: str, duration_s: int
) -> list[str]:
    script = items.parent.parent / "bench_auth.lua"
    return [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        str(items),
        str(args.threads),
        mode,
        path,
    ]


def run_wrk(command: list[str], duration_s: int) -> tuple[WrkResult, float]:
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    if completed.returncode != 0 or "Requests/sec" not in completed.stdout:
        raise RuntimeError(f"{shell_line(command)} failed:\n{completed.stdout}{completed.stderr}")
    elapsed = re.search(r"requests in ([0-9.]+(?:us|ms|s|m|h)),", completed.stdout)
    return parse_wrk(completed.stdout), duration_ms(elapsed[1]) / 1000 if elapsed else 0.0


# --- One variant --------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    base_url: str
    workdir: Path
    server: Service
    backing: Backing
    creds: Credentials
    # Requests per second seen per variant, to size the next single-use pools.
    rates: dict[str, float]


def items_file(ctx: Context, name: str, lines: Sequence[str]) -> Path:
    path = ctx.workdir / "items" / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def eth_pool(ctx: Context, seconds: int) -> list[str]:
    """Enough fresh signed messages for `seconds` at the rate seen so far (with head-room)."""
    rate = ctx.rates.get("eth", 800.0)
    count = max(ctx.args.connections * 4, math.ceil(rate * seconds * 1.5) + 200)
    return ctx.creds.signer.header_lines(count)


def measure(variant: Variant, ctx: Context, round_number: int) -> Measurement:
    args, backing = ctx.args, ctx.backing
    url = ctx.base_url + variant.path
    once = variant.credentials in ("miss", "eth")
    mode = "once" if once else "cycle"
    notes: list[str] = []

    if variant.credentials == "miss":
        backing.forget_key_info()
        pool = [f"Authorization: Bearer {key}" for key in ctx.creds.miss]
        warm_items = measured_items = items_file(ctx, "miss", pool)
    elif variant.credentials == "eth":
        with step(f"{variant.name}: nonces and signatures for the warm-up"):
            warm_items = items_file(ctx, "eth-warmup", eth_pool(ctx, args.warmup))
        measured_items = warm_items  # replaced below
    else:
        warm_items = measured_items = items_file(
            ctx, variant.name, [header_line(variant, ctx.creds)]
        )

    xacts_before = backing.db_transactions()
    with step(f"{variant.name}: {args.warmup}s warm-up"):
        warm, warm_elapsed = run_wrk(
            wrk_command(args, url, warm_items, mode, variant.path, args.warmup), args.warmup
        )
    if variant.credentials == "eth":
        ctx.rates["eth"] = warm.requests / warm_elapsed if warm_elapsed else 0.0
        with step(f"{variant.name}: nonces and signatures for the measured run"):
            measured_items = items_file(ctx, "eth", eth_pool(ctx, args.duration))
    if variant.credentials == "miss":
        forgotten = backing.forget_key_info()
        notes.append(f"{forgotten} cached key facts deleted after the warm-up")
    pool_size = len(measured_items.read_text().splitlines()) if once else 0

    with step(f"{variant.name}: {args.duration}s measured"):
        hits0, misses0 = backing.keyspace()
        backing_cpu0 = backing.cpu_ticks()
        server0 = group_usage([ctx.server.process.pid])
        watch = CpuWatch.start([ctx.server.process.pid])
        result, elapsed = run_wrk(
            wrk_command(args, url, measured_items, mode, variant.path, args.duration),
            args.duration,
        )
        server1 = group_usage([ctx.server.process.pid])
        other_cpu = watch.other_percent()
        backing_cpu1 = backing.cpu_ticks()
        hits1, misses1 = backing.keyspace()
    if variant.credentials == "miss":
        written = len(backing.key_info_entries())
        notes.append(
            f"{written} key facts cached during the run = key-info cache misses "
            f"(wrk counted {result.requests} answers; each key sent once)"
        )
    if variant.credentials == "hit":
        cached = backing.redis.exists(
            f"hokusai:1:authkeys:key:{key_digest(ctx.creds.hit, ctx.creds.pepper)}"
        )
        notes.append(f"the key's facts {'are' if cached else 'are NOT'} in the cache after the run")
    if once:
        notes.append(f"single-use pool of {pool_size}; ran {elapsed:.1f}s")
        if elapsed < args.duration - 0.5:
            notes.append("pool ran out before --duration: the run is shorter, its rate is fine")
    # Requests wrk left behind may still be running: let them end before the flush below
    # closes their database connections.
    wait_until_idle([ctx.server], window=0.5, timeout=30)
    backing.flush_db_stats()
    xacts = backing.db_transactions() - xacts_before

    requests = max(result.requests, 1)
    ctx.rates[variant.name] = result.requests_per_second
    return Measurement(
        variant=variant.name,
        round=round_number,
        result=result,
        elapsed_s=elapsed,
        other_cpu=other_cpu,
        server_cpu_ms=1000 * (server1.cpu_seconds - server0.cpu_seconds) / requests,
        backing_cpu_ms=1000 * cpu_seconds_between(backing_cpu0, backing_cpu1) / requests,
        db_xacts=xacts / max(result.requests + warm.requests, 1),
        redis_hits=(hits1 - hits0) / requests,
        redis_misses=(misses1 - misses0) / requests,
        notes=tuple(notes),
    )


# --- Report -------------------------------------------------------------------------------------


def print_header(
    args: argparse.Namespace, env: dict[str, str], workdir: Path, port: int, address: str
) -> None:
    print("Hokusai authentication cost: one trivial view behind each way in, one gunicorn")
    print("\nMachine")
    for fact in machine_facts():
        print(f"  {fact}")
    print("\nEnvironment of every process (nothing else is inherited but PATH, HOME, locale)")
    for key, value in env.items():
        if key in (*INHERITED_ENV, "PATH"):
            continue
        shown = f"<random, {len(value)} chars>" if key == "SECRET_KEY" else value
        print(f"  {key}={shown}")
    print(f"\n{workdir}/bench_auth_settings.py")
    print("  from hokusai_site.settings import *; INSTALLED_APPS += rest_framework_api_key;")
    print("  ROOT_URLCONF = 'bench_auth_urls'")
    print(f"{workdir}/bench_auth_urls.py: hokusai_site.urls plus, all one view returning")
    print('{"ok": true}:')
    print("  /bench/none        authentication_classes=[], AllowAny, throttle_classes=[]")
    print("  /bench/key, /bench/eth  our defaults: ApiKey, EthSignature, Session authentication,")
    print("                     IsAuthenticated, CallerRateThrottle (one Redis call per request)")
    print("  /bench/key-nolimit our authentication, IsAuthenticated, throttle_classes=[]")
    print("  /bench/peer        authentication_classes=[], HasAPIKey, throttle_classes=[]")
    print("\nSet-up")
    for command in setup_commands(workdir, args.miss_keys, address):
        print(f"  {shell_line(command)}")
    print(
        f"  (rate_limit_per_minute={HUGE_RATE_LIMIT} on every key and the identity: the limiter "
        "runs, never refuses)"
    )
    print("\nServer")
    model = gunicorn_worker_model(env)
    print(f"  {shell_line(GUNICORN)}   # deploy/gunicorn.conf.py defaults: {model}")
    url = f"http://127.0.0.1:{port}"
    items = workdir / "items" / "<variant>.txt"
    print("\nLoad, per variant: warm-up (not counted), then the measured run")
    print(f"  {shell_line(wrk_command(args, url + '<path>', items, '<mode>', '<path>', 1))}")
    print(
        f"  -d{args.warmup}s, then -d{args.duration}s; mode cycle: the same headers every "
        "request; once: each line once (cache-miss keys, signed messages), then the thread stops"
    )
    print(flush=True)


def best_rounds(measurements: list[Measurement]) -> dict[str, list[Measurement]]:
    rounds: dict[str, list[Measurement]] = {}
    for m in measurements:
        rounds.setdefault(m.variant, []).append(m)
    for runs in rounds.values():
        runs.sort(key=lambda m: m.result.requests_per_second, reverse=True)
    return rounds


def print_results(measurements: list[Measurement], args: argparse.Namespace) -> None:
    grouped = best_rounds(measurements)
    labels = {variant.name: variant for variant in VARIANTS}
    headers = ["variant", "path", "req/s", "p50 ms", "p99 ms", "non-2xx", "sock err"]
    headers += ["server cpu ms/req", "pg+redis cpu ms/req", "db xacts/req"]
    headers += ["redis hits/req", "redis misses/req", "other cpu%"]
    headers += ["req/s of each round"] if args.rounds > 1 else []
    rows = []
    for name, runs in grouped.items():
        best = runs[0]
        r = best.result
        row = [
            labels[name].label,
            labels[name].path,
            f"{r.requests_per_second:.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.non_2xx),
            str(r.socket_errors),
            f"{best.server_cpu_ms:.3f}",
            f"{best.backing_cpu_ms:.3f}",
            f"{best.db_xacts:.2f}",
            f"{best.redis_hits:.2f}",
            f"{best.redis_misses:.2f}",
            f"{best.other_cpu:.0f}",
        ]
        if args.rounds > 1:
            in_order = sorted(runs, key=lambda m: m.round)
            row.append(" ".join(f"{m.result.requests_per_second:.0f}" for m in in_order))
        rows.append(row)
    print()
    print(format_table(headers, rows))
    print(
        "\nserver cpu: gunicorn's CPU time (all processes) per request. pg+redis cpu: the "
        "PostgreSQL backends serving the bench database plus redis-server (shared: other Redis "
        "users count too). db xacts: PostgreSQL transactions (one per autocommit statement, "
        "Django's connection health check included) per request, warm-up and run together, "
        "from pg_stat_database. redis hits/misses: INFO keyspace counters of the whole Redis "
        "server per request (GETs: cached key facts, SIWE nonces, the rate limiter's state; the "
        "limiter's state lives ~1 ms at these limits, so its read mostly misses). other cpu%: "
        f"CPU used by others during the run; above {BUSY_MACHINE_PERCENT}% req/s is low."
    )
    if args.rounds > 1:
        print(f"Each row is the best of {args.rounds} rounds (req/s); all rounds are listed.")
    for name, runs in grouped.items():
        for note in runs[0].notes:
            print(f"  {labels[name].label}: {note}")
    bad = [
        labels[name].label
        for name, runs in grouped.items()
        if any(m.result.non_2xx or m.result.socket_errors for m in runs)
    ]
    print(
        f"\nNOT every answer was 2xx: {', '.join(bad)}"
        if bad
        else "\nEvery measured answer of every variant and round was 2xx (wrk: no non-2xx, "
        "no socket errors)."
    )
    print_added(grouped, labels)


def print_added(grouped: dict[str, list[Measurement]], labels: dict[str, Variant]) -> None:
    if "none" not in grouped:
        print("\n(no (a) run: nothing to compare with)")
        return
    base = grouped["none"][0]

    def added(m: Measurement) -> dict[str, float]:
        return {
            "server cpu": m.server_cpu_ms - base.server_cpu_ms,
            "server+pg+redis cpu": (m.server_cpu_ms + m.backing_cpu_ms)
            - (base.server_cpu_ms + base.backing_cpu_ms),
            "1/throughput": 1000 / m.result.requests_per_second
            - 1000 / base.result.requests_per_second,
        }

    metrics = ["server cpu", "server+pg+redis cpu", "1/throughput"]
    base_by_round = {m.round: m for m in grouped["none"]}
    rounds = len(base_by_round)
    rows = []
    for name, runs in grouped.items():
        if name == "none":
            continue
        values = added(runs[0])
        row = [labels[name].label, "", *(f"{values[m]:+.3f}" for m in metrics)]
        if rounds > 1:
            # Each round against that round's (a), run a minute apart at most: the spread.
            paired = [
                m.server_cpu_ms - base_by_round[m.round].server_cpu_ms
                for m in sorted(runs, key=lambda m: m.round)
            ]
            row.append(" ".join(f"{value:+.2f}" for value in paired))
        rows.append(row)
    headers = ["variant", "", *metrics]
    headers += ["server cpu, each round vs its (a)"] if rounds > 1 else []
    print("\nAdded per request over (a), ms (best rounds)")
    print(format_table(headers, rows))

    peer = added(grouped["peer"][0]) if "peer" in grouped else None
    print("\nTargets")
    for name in ("key-hit", "key-hit-nolimit"):
        if name in grouped:
            ours = added(grouped[name][0])
            for metric in metrics:
                print_verdicts(
                    f"{labels[name].label}, {metric}", ours[metric], peer and peer[metric]
                )


def print_verdicts(what: str, ours: float, peer: float | None) -> None:
    verdict = "met" if ours <= TARGET_ADDED_MS else "NOT met"
    parts = [f"{ours:+.3f} ms <= {TARGET_ADDED_MS} ms: {verdict}"]
    if peer is not None and peer > 0:
        share = ours / peer
        verdict = "met" if share <= TARGET_SHARE_OF_PEER else "NOT met"
        parts.append(f"/ (e)'s {peer:+.3f} ms = {share:.2f} <= 0.33: {verdict}")
    elif peer is not None:
        parts.append(f"(e) added {peer:+.3f} ms: no ratio")
    print(f"  {what}: " + "; ".join(parts))


def inproc_command(workdir: Path) -> list[str]:
    keys = str(workdir / "keys.json")
    return ["python", "-m", "bench_auth_inproc", keys, str(INPROC_ROUNDS), str(INPROC_REQUESTS)]


def run_inproc(env: dict[str, str], workdir: Path) -> dict[str, list[float]]:
    command = inproc_command(workdir)
    return python_json(command[1:], env, what="in-process run", timeout=900)


def print_inproc(results: dict[str, list[float]], workdir: Path) -> None:
    """The same views without server or client: one thread, no GIL hand-offs, no HTTP parsing,
    so the auth code path's own cost shows with little noise."""
    labels = {variant.name: variant for variant in VARIANTS}
    best = {name: min(values) for name, values in results.items()}
    rows = [
        [
            labels[name].label,
            labels[name].path,
            f"{best[name]:.3f}",
            f"{best[name] - best['none']:+.3f}",
            " ".join(f"{value:.3f}" for value in values),
        ]
        for name, values in results.items()
    ]
    print(
        f"\nIn-process: each view called {INPROC_REQUESTS} times x {INPROC_ROUNDS} rounds through "
        "Django's WSGI handler in one thread (all middleware, no server, no client socket)"
    )
    print(f"  {shell_line(inproc_command(workdir))}")
    print(format_table(["variant", "path", "cpu ms/req", "added", "each round"], rows))
    print("cpu ms/req: the process's CPU time per request, best round; added: over (a).")
    print("Targets (in-process)")
    peer = best["peer"] - best["none"]
    for name in ("key-hit", "key-hit-nolimit"):
        print_verdicts(labels[name].label, best[name] - best["none"], peer)


# --- Main ---------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    require_wrk()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="hokusai-bench-auth-"))
    write_modules(workdir)
    port = free_port()
    env = base_env(shared_settings(workdir, port))
    base_url = f"http://127.0.0.1:{port}"
    services = Services(log_dir=workdir)
    backing: Backing | None = None
    try:
        if ensure_database(BENCH_DATABASE):
            print(f".. created database {BENCH_DATABASE}", file=sys.stderr)
        signer = EthSigner(base_url, port)
        print_header(args, env, workdir, port, signer.account.address)
        migrate, setup = setup_commands(workdir, args.miss_keys, signer.account.address)
        with step("manage.py migrate"):
            run_to_end(services, "migrate", [sys.executable, *migrate[1:]], env)
        with step(f"keys: 1 cached, {args.miss_keys} for misses, 1 peer; the Ethereum identity"):
            print(f"[setup] {run_to_end(services, 'setup', [sys.executable, *setup[1:]], env)}")
        created = json.loads((workdir / "keys.json").read_text())
        creds = Credentials(
            created["hit"], created["miss"], created["peer"], signer, pepper=env["SECRET_KEY"]
        )
        backing = Backing()
        server = services.start("gunicorn", GUNICORN, env)
        with step("gunicorn: start"):
            wait_for_http(f"{base_url}/health", service=server, timeout=90)
        for line in preflight(base_url, args.variants, creds):
            print(f"[pre-flight] {line}")
        backing.flush_db_stats()
        ctx = Context(args, base_url, workdir, server, backing, creds, rates={})
        measurements = []
        for round_number in range(1, args.rounds + 1):
            for variant in args.variants:
                m = measure(variant, ctx, round_number)
                tag = f"[{variant.name}, round {round_number}]"
                print(
                    f"{tag} {m.result.requests_per_second:.0f} req/s, "
                    f"p50 {m.result.p50_ms:.2f} ms, server {m.server_cpu_ms:.3f} cpu ms/req, "
                    f"non-2xx {m.result.non_2xx}, other cpu {m.other_cpu:.0f}%",
                    flush=True,
                )
                if m.other_cpu > BUSY_MACHINE_PERCENT:
                    print(f"{tag} warning: other work took {m.other_cpu:.0f}% of the CPU")
                measurements.append(m)
        for note in server_log_notes(server.log_path):
            print(f"[gunicorn] {note}")
        services.stop(server)
        with step("in-process run"):
            inproc = run_inproc(env, workdir)
        print_results(measurements, args)
        print_inproc(inproc, workdir)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every service", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        services.stop_all()
        if backing is not None:
            backing.forget_bench_state()
            backing.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
