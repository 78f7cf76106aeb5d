"""What the MLflow proxy costs, side by side with MLflow itself, in one run:

(a) registrations/s through POST /api/v1/models/register (API key) vs
    MlflowClient.create_model_version straight to MLflow, each a new version of one registered
    model from a logged model of its own, 4 clients at once (target: ratio >= 0.7);
(b) requests/s of GET /api/2.0/mlflow/registered-models/get through the MLflow proxy server
    (API key) vs straight to MLflow, wrk at concurrency 8 (target: ratio >= 0.8);
(c) MB/s of a 500 MB artifact download through the MLflow proxy server vs straight from MLflow,
    with the peak memory of the serving processes (target: ratio >= 0.8, the proxy's memory flat).
(b) and (c) also show the same proxy served by the web server (gunicorn), which answers its
routes too.

Everything runs on loopback with the production settings: a dedicated PostgreSQL database,
emptied at the start, Redis db 11, `manage.py mlflow_server` with its default workers,
`manage.py mlflow_proxy_server` with its defaults, one gunicorn with the config file's worker
model.

    .venv/bin/python bench/registry.py [--duration 10] [--download-mb 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import health
import urllib3
from _common import (
    BUSY_MACHINE_PERCENT,
    GUNICORN,
    REDIS_HOST_PORT,
    CpuWatch,
    Service,
    Services,
    WrkResult,
    base_env,
    chosen_variants,
    ensure_database,
    format_table,
    free_port,
    group_usage,
    gunicorn_worker_model,
    load_arguments,
    manage,
    print_machine_and_environment,
    python_json,
    require_wrk,
    run_wrk,
    server_log_notes,
    shell_line,
    step,
    stop_on_sigterm,
    wait_for_http,
    wait_until_idle,
    wrk_command,
)

BENCH_DATABASE = "hokusai_bench_registry"
BENCH_REDIS_URL = f"redis://{REDIS_HOST_PORT}/11"
OWNER = "bench-registry"
# The key's rate limit: counted on every request, as in production, but never reached.
HUGE_RATE_LIMIT = 10**9
MODEL_NAME = "bench-registry-model"
ARTIFACT_PATH = "bench/download.bin"
TARGET_RATIO = 0.8
TARGET_REGISTRATION_RATIO = 0.7
REGISTRATION_CLIENTS = 4
MiB = 1024 * 1024

SETUP_SCRIPT = f"""
from django.contrib.auth import get_user_model
from authkeys import services
from authkeys.principals import SYSTEM

owner, _ = get_user_model().objects.get_or_create(username={OWNER!r})
_, key = services.api_key_create(
    actor=SYSTEM, owner_user_id=owner.pk, name="bench",
    scopes=["mlflow:read", "mlflow:write", "models:read", "models:write"],
    rate_limit_per_minute={HUGE_RATE_LIMIT},
)
print(key)
"""


@dataclass(frozen=True)
class Variant:
    name: str
    description: str


VARIANTS = [
    Variant("direct", "wrk -> MLflow"),
    Variant("proxy", "wrk -> manage.py mlflow_proxy_server (API key, scope, rate limit) -> MLflow"),
    Variant("web", "wrk -> gunicorn (the same proxy) -> MLflow"),
]
# (a) is our registration route, which the web server answers.
REGISTRATION_VARIANTS = ("direct", "web")
# The variant each ratio is of.
TARGET_VARIANT = {"a": "web", "b": "proxy", "c": "proxy"}


@dataclass(frozen=True)
class Setup:
    mlflow: Service
    web: Service
    proxy_server: Service
    mlflow_url: str
    base_url: str
    proxy_url: str
    key: str

    @property
    def services(self) -> list[Service]:
        return [self.mlflow, self.web, self.proxy_server]

    def door(self, variant: Variant) -> tuple[str, Service | None, dict[str, str]]:
        """Where a variant sends its requests, the server proxying them (None: straight to
        MLflow), and its headers."""
        if variant.name == "direct":
            return self.mlflow_url, None, {}
        if variant.name == "proxy":
            return self.proxy_url, self.proxy_server, self.key_header
        return self.base_url, self.web, self.key_header

    @property
    def key_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def measured(self, proxying: Service | None) -> dict[str, Service]:
        """The process groups a variant's figures are of: MLflow's, and the proxying server's."""
        return {"mlflow": self.mlflow} | ({"proxy": proxying} if proxying else {})


def parse_args() -> argparse.Namespace:
    parser = load_arguments(
        __doc__.split("\n\n")[0], [variant.name for variant in VARIANTS], duration=10
    )
    parser.add_argument("--download-mb", type=int, default=500, help="size of the artifact (c)")
    parser.add_argument(
        "--registrations", type=int, default=300, help="registrations per variant and round (a)"
    )
    parser.add_argument("--parts", default="abc", help="which measurements to run (a, b, c)")
    # MLflow's own req/s moves by up to half between back-to-back runs on a 2-core machine.
    parser.set_defaults(rounds=5)
    args = parser.parse_args()
    args.variants = chosen_variants(parser, args, VARIANTS)
    if args.download_mb < 1:
        parser.error("--download-mb must be >= 1")
    if not args.parts or set(args.parts) - set("abc"):
        parser.error("--parts takes letters from 'abc'")
    return args


def shared_settings(var_dir: Path, mlflow_port: int, port: int) -> dict[str, str]:
    served = health.served_settings(
        var_dir,
        mlflow_port=mlflow_port,
        port=port,
        database=BENCH_DATABASE,
        redis_url=BENCH_REDIS_URL,
    )
    return {**served, "MLFLOW_PROXY_SERVER_BIND": f"127.0.0.1:{free_port()}"}


def keyed_wrk(url: str, headers: dict[str, str], args: argparse.Namespace, duration_s: int):
    """run_wrk's arguments for one variant: with the API key's header through the proxy."""
    return {
        "url": url,
        "threads": args.threads,
        "connections": args.connections,
        "duration_s": duration_s,
        "headers": [f"{name}: {value}" for name, value in headers.items()],
    }


def print_header(args: argparse.Namespace, env: dict[str, str]) -> None:
    print("Hokusai MLflow proxy: the same MLflow routes through the proxy and straight to MLflow")
    print_machine_and_environment(env)
    print("\nServices")
    print(f"  {shell_line(['python', 'manage.py', 'migrate'])}")
    print(f"  {shell_line(['python', 'manage.py', 'mlflow_server'])}  (MLFLOW_WORKERS default)")
    print(f"  {shell_line(['python', 'manage.py', 'mlflow_proxy_server'])}  (its defaults)")
    print(f"  {shell_line(GUNICORN)}  -> {gunicorn_worker_model(env)}")
    print(f"  an API key with mlflow:read, mlflow:write and a rate limit of {HUGE_RATE_LIMIT}/min")
    route = f"/api/2.0/mlflow/registered-models/get?name={MODEL_NAME}"
    print(f"\n(b) GET {route}, per variant ({args.warmup}s warm-up, then measured)")
    doors = {"direct": "$MLFLOW", "proxy": "$PROXY_SERVER", "web": "$HOKUSAI"}
    for variant in args.variants:
        headers = {} if variant.name == "direct" else {"Authorization": "Bearer <key>"}
        wrk = wrk_command(**keyed_wrk(doors[variant.name] + route, headers, args, args.duration))
        print(f"  {variant.name}: {variant.description}")
        print(f"    {shell_line(wrk)}")
    print(
        f"\n(c) GET /api/2.0/mlflow-artifacts/artifacts/{ARTIFACT_PATH} ({args.download_mb} MB), "
        "read in 1 MiB pieces by one urllib3 client; the variants alternate, "
        f"{args.rounds} time(s) each"
    )
    print(
        f"\n(a) {args.registrations} registrations per variant and round, "
        f"{REGISTRATION_CLIENTS} clients at once, each of a logged model of its own run:"
    )
    print(
        "  direct: MlflowClient.create_model_version(name, source='models:/<id>', run_id, model_id,"
        " tags=<the 7 tags our route sets>)"
    )
    print("  proxy:  POST /api/v1/models/register {model_uri: 'models:/<id>', token, metric…}")
    print(flush=True)


def start_services(services: Services, env: dict[str, str]) -> Setup:
    """migrate, the API key, MLflow, the proxy server and gunicorn; the registered model that
    (b) reads."""
    with step("manage.py migrate (our tables and MLflow's)"):
        manage(env, "migrate")
    with step("API key"):
        key = manage(env, "shell", "-c", SETUP_SCRIPT).strip().splitlines()[-1]
    mlflow_url = env["MLFLOW_TRACKING_URI"]
    base_url = f"http://{env['HOKUSAI_BIND']}"
    proxy_url = f"http://{env['MLFLOW_PROXY_SERVER_BIND']}"
    with step("MLflow server, MLflow proxy server and gunicorn"):
        mlflow = services.start("mlflow", [sys.executable, "manage.py", "mlflow_server"], env)
        proxy_server = services.start(
            "mlflow_proxy_server", [sys.executable, "manage.py", "mlflow_proxy_server"], env
        )
        web = services.start("gunicorn", GUNICORN, env)
        wait_for_http(f"{mlflow_url}/health", service=mlflow, timeout=120)
        wait_for_http(f"{proxy_url}/health", service=proxy_server, timeout=90)
        wait_for_http(f"{base_url}/health", service=web, timeout=90)
    with step("waiting for MLflow's start-up work to settle"):
        wait_until_idle([mlflow, proxy_server, web])
    created_model = _http.request(
        "POST",
        f"{mlflow_url}/api/2.0/mlflow/registered-models/create",
        body=json.dumps({"name": MODEL_NAME}),
        headers={"Content-Type": "application/json"},
    )
    if created_model.status != 200 and b"RESOURCE_ALREADY_EXISTS" not in created_model.data:
        raise RuntimeError(f"registered-models/create: {created_model.status} {created_model.data}")
    return Setup(mlflow, web, proxy_server, mlflow_url, base_url, proxy_url, key)


_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=300))


def preflight(setup: Setup) -> str:
    """Every door answers 200 with the same body, so the figures compare like with like."""
    path = f"/api/2.0/mlflow/registered-models/get?name={MODEL_NAME}"
    answers = {}
    for variant in VARIANTS:
        base_url, _, headers = setup.door(variant)
        answers[variant.name] = _http.request("GET", base_url + path, headers=headers)
    direct = answers["direct"]
    for name, answer in answers.items():
        if (answer.status, answer.data) != (200, direct.data):
            raise RuntimeError(f"direct {direct.status} {direct.data!r}, {name} {answer.status}")
    limits = {name: answers[name].headers.get("X-RateLimit-Limit") for name in ("proxy", "web")}
    return f"all 200 with the same {len(direct.data)}-byte body; X-RateLimit-Limit {limits}"


# --- (a) registrations/s ----------------------------------------------------------------------

# Run by the load generator's own process (like wrk), so the clients' CPU is not ours.
REGISTER_SCRIPT = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import urllib3
from mlflow import MlflowClient

variant, base_url, key, model_name, token, clients = sys.argv[1:7]
sources = json.loads(sys.stdin.read())
local = MlflowClient(tracking_uri=base_url, registry_uri=base_url)
http = urllib3.PoolManager(maxsize=int(clients), retries=False)

# The tags our route sets on every version it registers, so MLflow does the same work.
TAGS = {"hokusai_token_id": token, "benchmark_metric": "accuracy", "benchmark_value": "0.5",
        "hokusai_status": "registered", "hokusai_proposal_identifier": "",
        "hokusai_registered_by": "bench-registry", "hokusai_current_value": "0.6"}

def direct(source):
    local.create_model_version(
        model_name, source="models:/" + source["model_id"], run_id=source["run_id"],
        model_id=source["model_id"], tags=TAGS, await_creation_for=0,
    )

def proxy(source):
    body = {"model_name": model_name, "token_symbol": token, "metric_name": "accuracy",
            "baseline_value": 0.5, "current_value": 0.6,
            "model_uri": "models:/" + source["model_id"]}
    answer = http.request("POST", base_url + "/api/v1/models/register", json=body,
                          headers={"Authorization": "Bearer " + key})
    if answer.status != 201:
        raise RuntimeError(f"{answer.status} {answer.data[:300]!r}")

started = time.perf_counter()
with ThreadPoolExecutor(int(clients)) as pool:
    list(pool.map(direct if variant == "direct" else proxy, sources))
print(json.dumps({"seconds": time.perf_counter() - started, "count": len(sources)}))
"""

CREATE_SOURCES_SCRIPT = """
import json, sys
from mlflow import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1])
sources = []
for _ in range(int(sys.argv[2])):
    run = client.create_run("0")
    model = client.create_logged_model("0", name="model", source_run_id=run.info.run_id)
    sources.append({"run_id": run.info.run_id, "model_id": model.model_id})
print(json.dumps(sources))
"""


@dataclass(frozen=True)
class Registrations:
    variant: str
    per_second: float
    web_cpu_ms: float
    mlflow_cpu_ms: float


def logged_model_sources(setup: Setup, env: dict[str, str], count: int) -> list[dict]:
    """`count` runs with a logged model each: every registration is of a source of its own."""
    script = ["-c", CREATE_SOURCES_SCRIPT, setup.mlflow_url, str(count)]
    return python_json(script, env, what="logging the sources", timeout=1800)


def measure_registrations(
    variant: Variant, setup: Setup, env: dict[str, str], sources: list[dict], round_number: int
) -> Registrations:
    name = f"bench-registrations-{variant.name}"
    base_url, _, _ = setup.door(variant)
    if variant.name == "direct" and round_number == 0:
        _http.request(
            "POST",
            f"{setup.mlflow_url}/api/2.0/mlflow/registered-models/create",
            body=json.dumps({"name": name}),
            headers={"Content-Type": "application/json"},
        )
    command = ["-c", REGISTER_SCRIPT, variant.name, base_url, setup.key, name]
    command += ["BENCHREG", str(REGISTRATION_CLIENTS)]
    pgids = [setup.web.process.pid, setup.mlflow.process.pid]
    with step(f"(a) {variant.name}: {len(sources)} registrations"):
        before = [group_usage([pgid]).cpu_seconds for pgid in pgids]
        result = python_json(
            command, env, what=f"(a) {variant.name}", timeout=1800, stdin=json.dumps(sources)
        )
        after = [group_usage([pgid]).cpu_seconds for pgid in pgids]
    web_ms, mlflow_ms = (
        1000 * (end - start) / result["count"] for start, end in zip(before, after, strict=True)
    )
    return Registrations(variant.name, result["count"] / result["seconds"], web_ms, mlflow_ms)


# --- (b) requests/s ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    variant: str
    result: WrkResult
    proxy_cpu_ms: float | None  # the proxying server's processes, per request (None: direct)
    mlflow_cpu_ms: float  # MLflow's processes, per request
    other_cpu: float


def measure_throughput(variant: Variant, setup: Setup, args: argparse.Namespace) -> Throughput:
    base_url, server, headers = setup.door(variant)
    url = f"{base_url}/api/2.0/mlflow/registered-models/get?name={MODEL_NAME}"
    groups = setup.measured(server)
    with step(f"(b) {variant.name}: {args.warmup}s warm-up, {args.duration}s measured"):
        run_wrk(**keyed_wrk(url, headers, args, args.warmup))
        before = {name: group_usage([s.process.pid]).cpu_seconds for name, s in groups.items()}
        watch = CpuWatch.start([service.process.pid for service in setup.services])
        result = run_wrk(**keyed_wrk(url, headers, args, args.duration))
        after = {name: group_usage([s.process.pid]).cpu_seconds for name, s in groups.items()}
        other_cpu = watch.other_percent()
    ms = {name: 1000 * (after[name] - before[name]) / max(result.requests, 1) for name in groups}
    return Throughput(variant.name, result, ms.get("proxy"), ms["mlflow"], other_cpu)


# --- (c) a large download -----------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    variant: str
    megabytes_per_second: float
    seconds: float
    proxy_growth_mib: float | None  # peak RSS of the proxying server over its RSS before
    mlflow_growth_mib: float


def write_artifact(var_dir: Path, size: int) -> None:
    """The artifact, written straight into MLflow's artifact store (uploads are tested)."""
    target = var_dir / "mlartifacts" / ARTIFACT_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MiB)
    with open(target, "wb") as file:
        for _ in range(size // MiB):
            file.write(block)


class PeakRss:
    """The largest summed RSS of each process group, sampled every 20 ms while in the block."""

    def __init__(self, pgids: list[int]) -> None:
        self.pgids = pgids
        self.before = {pgid: group_usage([pgid]).rss_bytes for pgid in pgids}
        self.peak = dict(self.before)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            for pgid in self.pgids:
                self.peak[pgid] = max(self.peak[pgid], group_usage([pgid]).rss_bytes)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def growth_mib(self, pgid: int) -> float:
        return (self.peak[pgid] - self.before[pgid]) / MiB


def measure_download(variant: Variant, setup: Setup, size: int) -> Download:
    base_url, server, headers = setup.door(variant)
    url = f"{base_url}/api/2.0/mlflow-artifacts/artifacts/{ARTIFACT_PATH}"
    pgids = {name: s.process.pid for name, s in setup.measured(server).items()}
    with step(f"(c) {variant.name}: {size // MiB} MB download"), PeakRss([*pgids.values()]) as rss:
        started = time.perf_counter()
        response = _http.request("GET", url, headers=headers, preload_content=False)
        received = sum(len(piece) for piece in response.stream(MiB))
        seconds = time.perf_counter() - started
        response.release_conn()
    if response.status != 200 or received != size:
        raise RuntimeError(f"{variant.name}: HTTP {response.status}, {received} of {size} bytes")
    growth = {name: rss.growth_mib(pgid) for name, pgid in pgids.items()}
    megabytes_per_second = size / 1e6 / seconds
    proxy_growth, mlflow_growth = growth.get("proxy"), growth["mlflow"]
    return Download(variant.name, megabytes_per_second, seconds, proxy_growth, mlflow_growth)


# --- Report -------------------------------------------------------------------------------------


def best_per_variant(items: list, score) -> list:
    """Each variant's best round (other work on the machine only ever slows a run down)."""
    best: dict[str, object] = {}
    for item in items:
        if item.variant not in best or score(item) > score(best[item.variant]):
            best[item.variant] = item
    return list(best.values())


def ratios_to_baseline(shown: list, score) -> dict[str, float]:
    """Each variant's score over the baseline's (the first variant run)."""
    return {item.variant: score(item) / score(shown[0]) for item in shown}


def target_ratio(ratios: dict[str, float], part: str) -> float | None:
    """The ratio a target is set on (TARGET_VARIANT's over the baseline), if both were run."""
    return ratios.get(TARGET_VARIANT[part]) if len(ratios) > 1 else None


def cpu_figure(milliseconds: float | None) -> str:
    return "-" if milliseconds is None else f"{milliseconds:.2f}"


def print_registrations(registrations: list[Registrations]) -> float | None:
    """The table for (a); returns our route's ratio."""
    shown = best_per_variant(registrations, lambda r: r.per_second)
    ratios = ratios_to_baseline(shown, lambda r: r.per_second)
    rows = [
        [
            r.variant,
            f"{r.per_second:.1f}",
            f"{r.web_cpu_ms:.1f}",
            f"{r.mlflow_cpu_ms:.1f}",
            f"{ratios[r.variant]:.2f}",
            " ".join(f"{x.per_second:.1f}" for x in registrations if x.variant == r.variant),
        ]
        for r in shown
    ]
    print("\n(a) registrations/s")
    headers = ["variant", "registrations/s", "gunicorn cpu ms/reg", "mlflow cpu ms/reg", "ratio"]
    print(format_table([*headers, "each round"], rows))
    return target_ratio(ratios, "a")


def round_ratios(throughputs: list[Throughput], variant: str) -> list[float]:
    """`variant`'s req/s over the baseline's (the first variant run) in each round: the two ran
    back to back, so a drift of the machine's speed moves both."""
    baseline = throughputs[0].variant
    rates = {
        name: [t.result.requests_per_second for t in throughputs if t.variant == name]
        for name in (baseline, variant)
    }
    return [ours / theirs for ours, theirs in zip(rates[variant], rates[baseline], strict=True)]


def print_throughputs(throughputs: list[Throughput]) -> float | None:
    """The table for (b); returns the proxy server's ratio."""
    names = list(dict.fromkeys(t.variant for t in throughputs))
    # Each variant's median round (the lower of the two middle ones for an even count).
    shown = []
    for name in names:
        rounds = sorted(
            (t for t in throughputs if t.variant == name),
            key=lambda t: t.result.requests_per_second,
        )
        shown.append(rounds[(len(rounds) - 1) // 2])
    per_round = {name: round_ratios(throughputs, name) for name in names}
    ratios = {name: statistics.median(values) for name, values in per_round.items()}
    rows = [
        [
            t.variant,
            "registered-models/get",
            f"{t.result.requests_per_second:.0f}",
            f"{t.result.p50_ms:.2f}",
            f"{t.result.p99_ms:.2f}",
            str(t.result.non_2xx),
            str(t.result.socket_errors),
            cpu_figure(t.proxy_cpu_ms),
            f"{t.mlflow_cpu_ms:.2f}",
            f"{t.other_cpu:.0f}",
            f"{ratios[t.variant]:.2f}",
            " ".join(
                f"{x.result.requests_per_second:.0f}" for x in throughputs if x.variant == t.variant
            ),
            " ".join(f"{ratio:.2f}" for ratio in per_round[t.variant]),
        ]
        for t in shown
    ]
    print("\n(b) requests/s")
    headers = ["variant", "route", "req/s", "p50 ms", "p99 ms", "non-2xx", "sock err"]
    headers += ["proxy cpu ms/req", "mlflow cpu ms/req", "other cpu%", "ratio"]
    print(format_table([*headers, "req/s of each round", "ratio of each round"], rows))
    print(
        f"Each variant's median round; ratio: the median of the rounds' req/s relative to "
        f"{names[0]} in the same round. cpu ms/req: CPU time per request of the proxying "
        "server's processes (granian's for proxy, gunicorn's for web) and of MLflow's. other "
        "cpu%: the CPU share of work not ours during the run (above "
        f"{BUSY_MACHINE_PERCENT}% the run competed for the CPU)."
    )
    return target_ratio(ratios, "b")


def print_downloads(downloads: list[Download], size: int) -> float | None:
    """The table for (c); returns the proxy server's ratio."""
    fastest = best_per_variant(downloads, lambda d: d.megabytes_per_second)
    ratios = ratios_to_baseline(fastest, lambda d: d.megabytes_per_second)
    rows = [
        [
            d.variant,
            f"{size // MiB} MB artifact",
            f"{d.megabytes_per_second:.0f}",
            f"{d.seconds:.2f}",
            "-"
            if d.proxy_growth_mib is None
            else f"{max(x.proxy_growth_mib for x in downloads if x.variant == d.variant):.1f}",
            f"{max(x.mlflow_growth_mib for x in downloads if x.variant == d.variant):.1f}",
            f"{ratios[d.variant]:.2f}",
            " ".join(f"{x.megabytes_per_second:.0f}" for x in downloads if x.variant == d.variant),
        ]
        for d in fastest
    ]
    print("\n(c) download")
    headers = ["variant", "what", "MB/s", "seconds", "proxy +MiB", "mlflow +MiB", "ratio"]
    print(format_table([*headers, "MB/s of each round"], rows))
    print(
        "+MiB: the largest rise of the process group's summed RSS during a download (sampled "
        "every 20 ms), over all rounds; MB/s and seconds: the best round."
    )
    return target_ratio(ratios, "c")


def main() -> None:
    args = parse_args()
    require_wrk()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="hokusai-bench-registry-"))
    var_dir = workdir / "var"
    for name in ("tmp", "static"):
        (var_dir / name).mkdir(parents=True)
    env = base_env(shared_settings(var_dir, mlflow_port=free_port(), port=free_port()))
    services = Services(log_dir=workdir)
    size = args.download_mb * MiB
    try:
        # Empty for every run: the runs, logged models and versions each run makes would pile
        # up in MLflow's tables from one run to the next.
        ensure_database(BENCH_DATABASE, fresh=True)
        print(f".. created database {BENCH_DATABASE}", file=sys.stderr)
        print_header(args, env)
        setup = start_services(services, env)
        print(f"[pre-flight] {preflight(setup)}")
        if "c" in args.parts:
            with step(f"writing the {args.download_mb} MB artifact"):
                write_artifact(var_dir, size)
        registrations, sources = [], []
        if "a" in args.parts:
            with step(f"(a) {args.registrations * args.rounds * 2} runs with a logged model each"):
                sources = logged_model_sources(setup, env, args.registrations * args.rounds * 2)
        registering = [v for v in args.variants if v.name in REGISTRATION_VARIANTS]
        for round_number in range(args.rounds if "a" in args.parts else 0):
            for index, variant in enumerate(registering):
                start = (round_number * 2 + index) * args.registrations
                batch = sources[start : start + args.registrations]
                registrations.append(
                    measure_registrations(variant, setup, env, batch, round_number)
                )
        throughputs, downloads = [], []
        # Rounds interleave the variants, so a burst of other work hits one round, not a variant.
        for _ in range(args.rounds):
            for variant in args.variants if "b" in args.parts else ():
                throughputs.append(measure_throughput(variant, setup, args))
            for variant in args.variants if "c" in args.parts else ():
                downloads.append(measure_download(variant, setup, size))
        for service in setup.services:
            for note in server_log_notes(service.log_path):
                print(f"[{service.name}] {note}")
        ratios = []
        if registrations:
            ratios.append(
                (
                    "(a) registrations/s",
                    print_registrations(registrations),
                    TARGET_REGISTRATION_RATIO,
                )
            )
        if throughputs:
            ratios.append(("(b) req/s", print_throughputs(throughputs), TARGET_RATIO))
        if downloads:
            ratios.append(("(c) MB/s", print_downloads(downloads, size), TARGET_RATIO))
        print("\nTargets (over direct: (a) web, (b) and (c) proxy)")
        for label, ratio, target in ratios:
            if ratio is None:
                print(f"  {label}: not measured (run direct and its variant)")
                continue
            verdict = "met" if ratio >= target else "NOT met"
            print(f"  {label}: {ratio:.2f}, target >= {target}: {verdict}")
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{shell_line(exc.cmd)} failed:\n{exc.stderr}") from None
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every service", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        services.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
