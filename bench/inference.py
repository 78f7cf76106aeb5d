"""Predictions through our endpoint, side by side with `mlflow models serve` and the in-process
floor, in one run, for the same scikit-learn model (an iris logistic regression):

(a) `mlflow models serve` (uvicorn, --env-manager local), POST /invocations;
(b) POST /api/v1/models/{model_id}/predict, with API-key auth, rate limits (counted, never
    reached) and the prediction log on, one run per server variant (--servers): the prediction
    server (`manage.py prediction_server --workers W --threads T`: granian serving
    inference.wsgi), gunicorn with deploy/gunicorn.conf.py (set through GUNICORN_WORKER_CLASS,
    GUNICORN_WORKERS, GUNICORN_THREADS), or uvicorn; every one with the same settings and key;
(c) mlflow.pyfunc.load_model(...).predict in one process, on the already parsed DataFrame (the
    floor).

The same wrk (a Lua script POSTing a `dataframe_split` body) loads (a) and (b) at each
concurrency (--connections) and body size (--rows). Targets: (b) req/s >= 2x (a) and p99 <= (a)'s
at every concurrency and body size; (b)'s p50 at concurrency 1 within 1 ms of (c)'s.

Everything runs on loopback with the production settings: a dedicated PostgreSQL database,
Redis db 8, `manage.py mlflow_server` with its default workers (the registry the model is logged
to and served from).

    .venv/bin/python bench/inference.py [--duration 10] [--connections 1,8,32] [--rows 1,100]
        [--servers "granian 2x2,granian 2x4,gthread 4x4"]
        [--mlflow-workers 1,2] [--rounds 1] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
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
    ensure_database,
    format_table,
    free_port,
    group_usage,
    gunicorn_worker_model,
    log_tail,
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

BENCH_DATABASE = "hokusai_bench_inference"
BENCH_REDIS_URL = f"redis://{REDIS_HOST_PORT}/8"
OWNER = "bench-inference"
MODEL_ID = "iris"  # our model id: the token symbol, lower case
MODEL_NAME = "bench-inference-iris"  # the MLflow registered model
EXPERIMENT = "bench-inference"
# The key's rate limit: counted on every request, as in production, but never reached.
HUGE_RATE_LIMIT = 10**9
TARGET_THROUGHPUT_RATIO = 2.0
TARGET_FLOOR_MS = 1.0
DEFAULT_SERVERS = "granian 2x2,granian 2x4,gthread 4x4"
SERVER_KINDS = "'granian WxT', 'gthread WxT', 'sync W' or 'uvicorn W'"
# Seconds of load at the highest concurrency after a server starts, before any measured run:
# first requests pay for connections, imports and caches (the model itself is preloaded).
SERVER_WARMUP_S = 4

# Run with MLFLOW_TRACKING_URI set: the stock client logs, registers and waits for READY. The
# registered model is dropped first, so its version is 1 on every run of this benchmark.
LOG_MODEL_SCRIPT = """
import json, sys, time
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

name, experiment, sizes = sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3].split(",")]
X, y = load_iris(return_X_y=True, as_frame=True)
model = LogisticRegression(max_iter=1000).fit(X, y)
client = MlflowClient()
try:
    client.delete_registered_model(name)
except MlflowException:
    pass  # not there yet
mlflow.set_experiment(experiment)
with mlflow.start_run() as run:
    info = mlflow.sklearn.log_model(
        model, name="model", signature=infer_signature(X, model.predict(X))
    )
client.create_registered_model(name)
version = client.create_model_version(
    name, f"models:/{info.model_id}", run_id=run.info.run_id, model_id=info.model_id
)
deadline = time.monotonic() + 60
while version.status != "READY" and time.monotonic() < deadline:
    time.sleep(0.2)
    version = client.get_model_version(name, version.version)
if version.status != "READY":
    raise SystemExit(f"version {version.version} is {version.status}")
# The bodies: rows drawn from the data set (with repeats beyond its 150 rows), classes mixed.
bodies = {}
for size in sizes:
    sample = X.sample(size, random_state=0, replace=size > len(X))
    split = {"columns": list(sample.columns), "data": sample.values.tolist()}
    bodies[str(size)] = json.dumps({"dataframe_split": split}, separators=(",", ":"))
print(json.dumps({"version": version.version, "model_id": info.model_id,
                  "run_id": run.info.run_id, "bodies": bodies}))
"""

# Run by `manage.py shell`: the Model row, an empty prediction log, the API key.
SETUP_SCRIPT = f"""
from django.contrib.auth import get_user_model
from django.db import connection
from authkeys import services
from authkeys.principals import SYSTEM
from inference.models import PredictionLog
from registry.models import Model

owner, _ = get_user_model().objects.get_or_create(username={OWNER!r})
Model.objects.update_or_create(
    model_id={MODEL_ID!r},
    defaults=dict(
        token_symbol={MODEL_ID.upper()!r}, name={MODEL_NAME!r}, owner_user=owner,
        metric_name="accuracy", metric_direction="higher", baseline_value=0.9,
    ),
)
with connection.cursor() as cursor:
    cursor.execute("TRUNCATE " + connection.ops.quote_name(PredictionLog._meta.db_table))
_, key = services.api_key_create(
    actor=SYSTEM, owner_user_id=owner.pk, name="bench-inference",
    scopes=["predict"], rate_limit_per_minute={HUGE_RATE_LIMIT},
)
print(key)
"""

COUNT_LOG_SCRIPT = """
from inference.models import PredictionLog
print(PredictionLog.objects.filter(status=200).count(), PredictionLog.objects.count())
"""

# (c), in a process of its own: the model loaded as a serving process loads it, then timed on
# the body already parsed into a DataFrame (the floor), and on the body as bytes (json.loads,
# MLflow's input parsing, predict, MLflow's JSON encoding: the scoring protocol's own work).
FLOOR_SCRIPT = """
import json, statistics, sys, time
from io import StringIO
import mlflow
from mlflow.pyfunc.scoring_server import infer_and_parse_data, predictions_to_json

uri, calls = sys.argv[1], int(sys.argv[2])
bodies = json.loads(sys.stdin.read())
model = mlflow.pyfunc.load_model(uri)
schema = model.metadata.get_input_schema()

def timed(function):
    for _ in range(min(200, calls)):
        function()
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return {"p50_ms": 1000 * statistics.median(seconds),
            "p99_ms": 1000 * seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))]}

def whole(body):
    data = infer_and_parse_data(json.loads(body), schema)
    out = StringIO()
    predictions_to_json(model.predict(data), out)
    return out.getvalue()

results = {}
for rows, body in bodies.items():
    data = infer_and_parse_data(json.loads(body), schema)
    results[rows] = {"predict": timed(lambda: model.predict(data)),
                     "protocol": timed(lambda: whole(body))}
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Server:
    name: str  # as given to --servers / --mlflow-workers
    kind: str  # "mlflow" (a) or "ours" (b)
    description: str
    env: dict[str, str] = field(default_factory=dict)  # on top of the shared environment
    runner: str = "gunicorn"  # (b)'s: "gunicorn" (configured by env), "uvicorn" or "granian"
    workers: int = 0  # uvicorn's and granian's
    threads: int = 0  # granian's


@dataclass(frozen=True)
class Cell:
    rows: int
    connections: int


@dataclass(frozen=True)
class Measurement:
    server: str
    cell: Cell
    result: WrkResult
    server_cpu_ms: float  # the server's processes, per request
    deps_cpu_ms: float  # PostgreSQL, Redis and the MLflow tracking server, per request
    other_cpu: float
    round: int


@dataclass(frozen=True)
class Floor:
    predict_p50: float
    predict_p99: float
    protocol_p50: float
    protocol_p99: float


def parse_server(text: str) -> Server:
    """ "granian 2x4", "gthread 4x4", "sync 2" or "uvicorn 2": our endpoint (b) on that server."""
    spec = " ".join(text.split())
    if match := re.fullmatch(r"granian (\d+)x(\d+)", spec):
        workers, threads = map(int, match.groups())
        description = f"granian WSGI (prediction_server), {workers} workers x {threads} threads"
        return Server(spec, "ours", description, runner="granian", workers=workers, threads=threads)
    if match := re.fullmatch(r"gthread (\d+)x(\d+)", spec):
        workers, threads = match.groups()
        return Server(
            spec,
            "ours",
            f"gunicorn gthread, {workers} workers x {threads} threads",
            {
                "GUNICORN_WORKER_CLASS": "gthread",
                "GUNICORN_WORKERS": workers,
                "GUNICORN_THREADS": threads,
            },
        )
    if match := re.fullmatch(r"sync (\d+)", spec):
        # gunicorn runs gthread instead of sync when threads > 1 (the config's default is 4).
        env = {
            "GUNICORN_WORKER_CLASS": "sync",
            "GUNICORN_WORKERS": match[1],
            "GUNICORN_THREADS": "1",
        }
        return Server(spec, "ours", f"gunicorn sync, {match[1]} workers", env)
    if match := re.fullmatch(r"uvicorn (\d+)", spec):
        workers = int(match[1])
        return Server(
            spec, "ours", f"uvicorn ASGI, {workers} workers", runner="uvicorn", workers=workers
        )
    raise ValueError(spec)


def positive_list(parser: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        parser.error(f"{option} takes comma-separated positive integers")
    return list(dict.fromkeys(values))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    parser.add_argument("--connections", default="1,8,32", help="wrk connections, comma-separated")
    parser.add_argument("--rows", default="1,100", help="rows per body, comma-separated")
    parser.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help=f"(b) servers, comma-separated: {SERVER_KINDS}",
    )
    parser.add_argument(
        "--mlflow-workers", default="1,2", help="(a) `mlflow models serve --workers`, each"
    )
    parser.add_argument("--floor-calls", type=int, default=2000, help="timed calls for (c)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every server this many times, in turn; each cell shows its best round "
        "(other work on the machine only ever slows a run down)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (the servers' logs)"
    )
    args = parser.parse_args()
    if min(args.duration, args.warmup, args.floor_calls, args.rounds) < 1:
        parser.error("--duration, --warmup, --floor-calls and --rounds must be >= 1")
    args.connections = positive_list(parser, "--connections", args.connections)
    args.rows = positive_list(parser, "--rows", args.rows)
    mlflow_workers = positive_list(parser, "--mlflow-workers", args.mlflow_workers)
    ours = []
    for text in dict.fromkeys(" ".join(s.split()) for s in args.servers.split(",") if s.strip()):
        try:
            ours.append(parse_server(text))
        except ValueError:
            parser.error(f"unknown server {text!r}: {SERVER_KINDS}")
    if not ours:
        parser.error("--servers names no server")
    args.servers = [
        Server(f"mlflow serve {n}w", "mlflow", f"mlflow models serve --workers {n} (uvicorn)")
        for n in mlflow_workers
    ] + ours
    args.cells = [Cell(rows, c) for rows in args.rows for c in args.connections]
    return args


def shared_settings(var_dir: Path, mlflow_port: int, port: int) -> dict[str, str]:
    return health.served_settings(
        var_dir,
        mlflow_port=mlflow_port,
        port=port,
        database=BENCH_DATABASE,
        redis_url=BENCH_REDIS_URL,
    )


# --- Servers -------------------------------------------------------------------------------------


def model_uri(version: str) -> str:
    return f"models:/{MODEL_NAME}/{version}"


def server_command(server: Server, port: int, version: str) -> list[str]:
    if server.kind == "mlflow":
        workers = server.name.split()[-1].rstrip("w")
        return [
            "mlflow",
            "models",
            "serve",
            "-m",
            model_uri(version),
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            workers,
        ]
    if server.runner == "granian":
        return [
            sys.executable,
            "manage.py",
            "prediction_server",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(server.workers),
            "--threads",
            str(server.threads),
        ]
    if server.runner == "uvicorn":
        return [
            "uvicorn",
            "hokusai_site.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(server.workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    return GUNICORN


def server_env(server: Server, env: dict[str, str], port: int) -> dict[str, str]:
    extra = dict(server.env)
    if server.kind == "ours":
        # As deployed (README), and as `mlflow models serve` does: each worker loads the model
        # as it starts, not on the first request that reaches it.
        extra["MODEL_SERVING_PRELOAD"] = MODEL_ID
    # granian: prediction_server gives its workers a fresh PROMETHEUS_MULTIPROC_DIR (in TMPDIR).
    if server.kind == "ours" and server.runner == "gunicorn":
        extra["HOKUSAI_BIND"] = f"127.0.0.1:{port}"
    elif server.runner == "uvicorn":
        # gunicorn.conf.py sets this for gunicorn; uvicorn's workers need it to share metrics.
        extra["PROMETHEUS_MULTIPROC_DIR"] = str(Path(env["TMPDIR"]) / f"prom-uvicorn-{port}")
        Path(extra["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    return {**env, **extra}


def server_url(server: Server, port: int) -> str:
    if server.kind == "mlflow":
        return f"http://127.0.0.1:{port}/invocations"
    return f"http://127.0.0.1:{port}/api/v1/models/{MODEL_ID}/predict"


def ready_url(server: Server, port: int) -> str:
    return f"http://127.0.0.1:{port}/" + ("ping" if server.kind == "mlflow" else "health")


def effective_model(server: Server, env: dict[str, str]) -> str:
    if server.kind == "mlflow" or server.runner != "gunicorn":
        return server.description
    return "gunicorn " + gunicorn_worker_model(env)


# --- Load ----------------------------------------------------------------------------------------


def write_scripts(workdir: Path, bodies: dict[str, str]) -> dict[int, Path]:
    """One wrk script per body: POST it as JSON (the key, for (b), goes in with -H)."""
    scripts = {}
    for rows, body in bodies.items():
        path = workdir / f"post-{rows}-rows.lua"
        assert "]==]" not in body
        path.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{body}]==]\n"
        )
        scripts[int(rows)] = path
    return scripts


def load_options(
    url: str, script: Path, connections: int, duration_s: int, key: str | None
) -> dict:
    """run_wrk's (and wrk_command's) arguments for one run of a POST body."""
    return {
        "url": url,
        "threads": min(connections, 2),
        "connections": connections,
        "duration_s": duration_s,
        "headers": [] if key is None else [f"Authorization: Bearer {key}"],
        "script": script,
    }


def daemons_cpu_seconds() -> float:
    """CPU seconds of the PostgreSQL backends on our database (Django's, MLflow's) and of Redis
    (the rate limits; shared with whatever else uses this Redis). Summed over the processes alive
    now: a backend that exits in between takes its CPU with it, which persistent connections
    (CONN_MAX_AGE) make rare."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
            name = text[text.index("(") + 1 : text.rindex(")")]
            if name == "postgres":
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if BENCH_DATABASE.encode() not in cmdline.read():
                        continue
            elif name != "redis-server":
                continue
        except OSError:
            continue  # exited while we looked
        fields = text.rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=120))


def log_notes(log_path: Path) -> list[str]:
    """server_log_notes, without uvicorn's tracebacks for the requests wrk cuts off when it stops
    (starlette's ClientDisconnect): counted instead."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    disconnects = text.count("starlette.requests.ClientDisconnect")
    notes = server_log_notes(log_path)
    if disconnects:
        notes = [note for note in notes if "Traceback" not in note]
        if text.count("Traceback") > disconnects:
            notes.append("log: tracebacks besides ClientDisconnect ones; see the log (--keep)")
        notes.append(
            f"{disconnects} ClientDisconnect traceback(s): requests cut off as wrk stopped"
        )
    return notes


def post(url: str, body: str, key: str | None) -> urllib3.BaseHTTPResponse:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return _http.request("POST", url, body=body.encode(), headers=headers)


def model_loads(port: int) -> int | None:
    """hokusai_model_loads_total from /metrics (every worker counted), if it can be read."""
    try:
        response = _http.request("GET", f"http://127.0.0.1:{port}/metrics", timeout=5)
    except urllib3.exceptions.HTTPError:
        return None
    if response.status != 200:
        return None
    match = re.search(rb"^hokusai_model_loads_total\s+([0-9.e+]+)$", response.data, re.M)
    return int(float(match[1])) if match else None


def workers_of(server: Server, env: dict[str, str]) -> int:
    return server.workers or int(env["GUNICORN_WORKERS"])  # set for every gunicorn variant


def wait_for_model_loads(port: int, *, workers: int, timeout: float = 180) -> None:
    """Until every worker has loaded the model. Connections need not spread over the workers
    during the warm-up, and a worker loading the model while measured (5-8 s of CPU) would make
    its round a fraction of the others (seen: 0, 80 and 133 req/s against ~380)."""
    deadline = time.monotonic() + timeout
    while (model_loads(port) or 0) < workers:
        if time.monotonic() > deadline:
            print(f"[warning] fewer than {workers} model loads after {timeout:.0f}s")
            return
        time.sleep(0.5)


@dataclass
class Totals:
    """Requests wrk completed against (b), warm-ups included, to compare with the log."""

    ours_requests: int = 0


def measure_server(
    server: Server,
    services: Services,
    env: dict[str, str],
    tracking: Service,
    setup: dict,
    scripts: dict[int, Path],
    args: argparse.Namespace,
    totals: Totals,
    round_number: int,
) -> list[Measurement]:
    port = free_port()
    full_env = server_env(server, env, port)
    url = server_url(server, port)
    key = setup["key"] if server.kind == "ours" else None
    name = "server-" + re.sub(r"\W+", "-", server.name)
    process = services.start(name, server_command(server, port, setup["version"]), full_env)
    measurements = []
    try:
        with step(f"{server.name}: start, load the model, {SERVER_WARMUP_S}s warm-up per body"):
            wait_for_http(ready_url(server, port), service=process, timeout=180)
            for rows in args.rows:
                response = post(url, setup["bodies"][str(rows)], key)
                if response.status != 200:
                    raise RuntimeError(f"{server.name}: {response.status} {response.data[:500]!r}")
            for rows in args.rows:
                warm = run_wrk(
                    **load_options(url, scripts[rows], max(args.connections), SERVER_WARMUP_S, key)
                )
                totals.ours_requests += warm.requests if key else 0
            if server.kind == "ours":
                wait_for_model_loads(port, workers=workers_of(server, full_env))
            wait_until_idle([process], percent_of_a_core=10, window=1, timeout=30)
        if server.kind == "ours":
            # The server's CPU below is its whole process group's: master and every worker.
            used = re.search(r"Using worker: (\S+)", process.log_path.read_text(errors="replace"))
            workers = workers_of(server, full_env)
            facts = [
                f"model loads after warm-up: {model_loads(port)} (workers: {workers})",
                f"processes in its group: {group_usage([process.process.pid]).processes}",
            ]
            if server.runner == "gunicorn":
                # What gunicorn really runs (it turns sync into gthread when threads > 1).
                facts.insert(0, f"gunicorn says 'Using worker: {used[1] if used else '?'}'")
            print(f"[{server.name}] {'; '.join(facts)}")
        pgids = [process.process.pid, tracking.process.pid]
        for cell in args.cells:
            script = scripts[cell.rows]
            label = f"{server.name}: {cell.rows} row(s), {cell.connections} connection(s)"
            with step(f"{label} ({args.warmup}s warm-up, {args.duration}s)"):
                warm = run_wrk(**load_options(url, script, cell.connections, args.warmup, key))
                before = group_usage([process.process.pid]).cpu_seconds
                deps_before = (
                    daemons_cpu_seconds() + group_usage([tracking.process.pid]).cpu_seconds
                )
                watch = CpuWatch.start(pgids)
                result = run_wrk(**load_options(url, script, cell.connections, args.duration, key))
                other = watch.other_percent()
                after = group_usage([process.process.pid]).cpu_seconds
                deps_after = daemons_cpu_seconds() + group_usage([tracking.process.pid]).cpu_seconds
            if key:
                totals.ours_requests += warm.requests + result.requests
            count = max(result.requests, 1)
            measurements.append(
                Measurement(
                    server.name,
                    cell,
                    result,
                    1000 * (after - before) / count,
                    1000 * (deps_after - deps_before) / count,
                    other,
                    round_number,
                )
            )
        for note in log_notes(process.log_path):
            print(f"[{server.name}] {note}")
        sys.stdout.flush()
        return measurements
    finally:
        services.stop(process)


# --- Setup ---------------------------------------------------------------------------------------


def start_tracking(services: Services, env: dict[str, str]) -> Service:
    with step("manage.py migrate (our tables and MLflow's)"):
        manage(env, "migrate")
    with step("MLflow tracking server"):
        tracking = services.start("mlflow", [sys.executable, "manage.py", "mlflow_server"], env)
        wait_for_http(f"{env['MLFLOW_TRACKING_URI']}/health", service=tracking, timeout=120)
    return tracking


def log_model(env: dict[str, str], rows: list[int]) -> dict:
    with step("log, register the iris model with the stock MLflow client"):
        script = ["-c", LOG_MODEL_SCRIPT, MODEL_NAME, EXPERIMENT, ",".join(map(str, rows))]
        logged = python_json(script, env, what="logging the model", timeout=600)
    with step("Model row, API key, empty prediction log"):
        logged["key"] = manage(env, "shell", "-c", SETUP_SCRIPT).strip().splitlines()[-1]
    return logged


def measure_floor(env: dict[str, str], setup: dict, calls: int) -> dict[int, Floor]:
    with step(f"(c) in-process pyfunc.predict, {calls} timed calls per body"):
        found = python_json(
            ["-c", FLOOR_SCRIPT, model_uri(setup["version"]), str(calls)],
            env,
            what="(c)",
            timeout=900,
            stdin=json.dumps(setup["bodies"]),
        )
    return {
        int(rows): Floor(
            times["predict"]["p50_ms"],
            times["predict"]["p99_ms"],
            times["protocol"]["p50_ms"],
            times["protocol"]["p99_ms"],
        )
        for rows, times in found.items()
    }


def preflight(
    services: Services, env: dict[str, str], setup: dict, args: argparse.Namespace
) -> list[str]:
    """(a) and (b) answer 200 with the same predictions for every body."""
    mlflow_server = next(s for s in args.servers if s.kind == "mlflow")
    ours = next(s for s in args.servers if s.kind == "ours")
    answers: dict[str, dict[str, list]] = {}
    notes = []
    for server in (mlflow_server, ours):
        port = free_port()
        key = setup["key"] if server.kind == "ours" else None
        process = services.start(
            f"preflight-{server.kind}",
            server_command(server, port, setup["version"]),
            server_env(server, env, port),
        )
        try:
            wait_for_http(ready_url(server, port), service=process, timeout=180)
            answers[server.kind] = {}
            for rows, body in setup["bodies"].items():
                response = post(server_url(server, port), body, key)
                if response.status != 200:
                    raise RuntimeError(
                        f"pre-flight {server.name}: {response.status} {response.data[:500]!r}\n"
                        f"{log_tail(process.log_path)}"
                    )
                answers[server.kind][rows] = json.loads(response.data)["predictions"]
                if key and rows == str(args.rows[0]):
                    document = json.loads(response.data)
                    extra = sorted(set(document) - {"predictions"})
                    limit = response.headers.get("X-RateLimit-Limit")
                    notes.append(f"(b) answer keys besides predictions: {', '.join(extra)}")
                    notes.append(f"(b) X-RateLimit-Limit: {limit}")
        finally:
            services.stop(process)
    for rows in setup["bodies"]:
        if answers["mlflow"][rows] != answers["ours"][rows]:
            raise RuntimeError(
                f"{rows} row(s): (a) {answers['mlflow'][rows]!r} != (b) {answers['ours'][rows]!r}"
            )
        shown = answers["ours"][rows]
        notes.insert(
            0,
            f"{rows} row(s): (a) and (b) both 200, the same {len(shown)} predictions "
            f"(first {shown[:5]})",
        )
    return notes


# --- Report --------------------------------------------------------------------------------------


def print_header(args: argparse.Namespace, env: dict[str, str]) -> None:
    print("Hokusai predictions: our endpoint beside `mlflow models serve` and in-process predict")
    print_machine_and_environment(env)
    print("\nServices")
    print(f"  {shell_line(['python', 'manage.py', 'migrate'])}")
    print(f"  {shell_line(['python', 'manage.py', 'mlflow_server'])}  (MLFLOW_WORKERS default)")
    print(
        "  model: sklearn LogisticRegression(max_iter=1000) on load_iris(as_frame=True), "
        "mlflow.sklearn.log_model(name='model', signature=infer_signature(X, predict(X))), "
        f"registered as {MODEL_NAME} version 1 (stock MlflowClient)"
    )
    print(
        f"  our Model row {MODEL_ID!r} -> {MODEL_NAME}; an API key with scope predict and a rate "
        f"limit of {HUGE_RATE_LIMIT}/min; the prediction log on (emptied first)"
    )


def print_servers(args: argparse.Namespace, env: dict[str, str], setup: dict) -> None:
    print("\nServers, one at a time (only the variables that differ are shown), port P")
    for server in args.servers:
        full_env = server_env(server, env, 0)
        shown = {k: v.replace(":0", ":P") for k, v in full_env.items() if env.get(k) != v}
        label = "(a)" if server.kind == "mlflow" else "(b)"
        print(f"  {label} {server.name}: {effective_model(server, full_env)}")
        command = [
            "P" if part == "0" else "python" if part == sys.executable else part.replace(":0", ":P")
            for part in server_command(server, 0, "1")
        ]
        print(f"      {shell_line(command, shown)}")
        print(f"      POST {server_url(server, 0).replace(':0/', ':P/')}")
    print(
        f"\nLoad, per server, body and concurrency C: {args.warmup}s warm-up, then measured; "
        f"wrk threads = min(C, 2). After each start: one request per body, "
        f"{SERVER_WARMUP_S}s at C={max(args.connections)} per body, and for (b) a wait until "
        "every worker has loaded the model (MODEL_SERVING_PRELOAD)."
    )
    for rows in args.rows:
        size = len(setup["bodies"][str(rows)])
        print(f"  post-{rows}-rows.lua: POST, Content-Type: application/json, a {size}-byte body")
    url = f"http://127.0.0.1:P/api/v1/models/{MODEL_ID}/predict"
    example = wrk_command(
        **load_options(url, Path(f"post-{args.rows[0]}-rows.lua"), 8, args.duration, "<key>")
    )
    print(f"  (b): {shell_line(example)}")
    print("  (a): the same, to /invocations, without the Authorization header")
    print(
        f"(c): mlflow.pyfunc.load_model({model_uri(setup['version'])!r}) in its own process; "
        f"{args.floor_calls} timed calls after 200 untimed"
    )
    print(flush=True)


def baseline(measurements: list[Measurement], cell: Cell) -> tuple[float, float]:
    """(a)'s best req/s and best p99 in this cell, over its worker counts: the bar (b) meets."""
    own = [m for m in measurements if m.cell == cell and m.server.startswith("mlflow")]
    return (
        max(m.result.requests_per_second for m in own),
        min(m.result.p99_ms for m in own),
    )


def best_rounds(measurements: list[Measurement]) -> list[Measurement]:
    """Each (server, cell)'s round with the most req/s, in measuring order."""
    best: dict[tuple[str, Cell], Measurement] = {}
    for m in measurements:
        key = (m.server, m.cell)
        if key not in best or m.result.requests_per_second > best[key].result.requests_per_second:
            best[key] = m
    return list(best.values())


def print_results(
    every_round: list[Measurement], floors: dict[int, Floor], args: argparse.Namespace
) -> None:
    measurements = best_rounds(every_round)
    print("\n(c) the floor: in-process, one call at a time")
    rows = [
        [
            f"{rows} row(s)",
            "pyfunc.predict(df)",
            f"{floor.predict_p50:.3f}",
            f"{floor.predict_p99:.3f}",
        ]
        for rows, floor in floors.items()
    ] + [
        [
            f"{rows} row(s)",
            "json+parse+predict+encode",
            f"{floor.protocol_p50:.3f}",
            f"{floor.protocol_p99:.3f}",
        ]
        for rows, floor in floors.items()
    ]
    print(format_table(["body", "what", "p50 ms", "p99 ms"], rows))
    print(
        "json+parse+predict+encode: json.loads, MLflow's infer_and_parse_data, predict and "
        "predictions_to_json: what both servers do per request besides HTTP."
    )

    headers = ["server", "conc", "req/s", "p50 ms", "p99 ms", "non-2xx", "sock err"]
    headers += ["server cpu ms/req", "deps cpu ms/req", "other cpu%", "x (a) req/s"]
    headers += ["p99 <= (a)"] + (
        ["each round: req/s (server cpu ms/req)"] if args.rounds > 1 else []
    )
    for rows in args.rows:
        print(f"\n(a), (b): {rows}-row dataframe_split body")
        table = []
        for connections in args.connections:
            cell = Cell(rows, connections)
            best_rps, best_p99 = baseline(measurements, cell)
            for m in (m for m in measurements if m.cell == cell):
                ours = not m.server.startswith("mlflow")
                r = m.result
                table.append(
                    [
                        m.server,
                        str(connections),
                        f"{r.requests_per_second:.0f}",
                        f"{r.p50_ms:.2f}",
                        f"{r.p99_ms:.2f}",
                        str(r.non_2xx),
                        str(r.socket_errors),
                        f"{m.server_cpu_ms:.2f}",
                        f"{m.deps_cpu_ms:.2f}",
                        f"{m.other_cpu:.0f}",
                        f"{r.requests_per_second / best_rps:.2f}" if ours else "-",
                        ("yes" if r.p99_ms <= best_p99 else "NO") if ours else "-",
                    ]
                )
                if args.rounds > 1:
                    table[-1].append(
                        " ".join(
                            f"{x.result.requests_per_second:.0f} ({x.server_cpu_ms:.2f})"
                            for x in every_round
                            if (x.server, x.cell) == (m.server, cell)
                        )
                    )
        print(format_table(headers, table))
    print(
        "\nx (a) req/s: req/s over (a)'s best req/s in that row group (the best of its worker "
        "counts); p99 <= (a): against (a)'s lowest p99 there. server cpu ms/req: CPU time of the "
        "server's processes per request; deps: the PostgreSQL backends on the benchmark's "
        "database, Redis (shared) and the MLflow tracking server. other cpu%: the CPU share of "
        f"work not ours during the run (above {BUSY_MACHINE_PERCENT}% the run competed for the "
        "CPU). wrk shares the 2 cores."
        + (f" Each row is the best of {args.rounds} rounds (req/s)." if args.rounds > 1 else "")
    )

    ours = list(dict.fromkeys(m.server for m in measurements if not m.server.startswith("mlflow")))
    cells = args.cells
    labels = [f"{c.rows}r c{c.connections}" for c in cells]
    by_key = {(m.server, m.cell): m for m in measurements}
    bars = {c: baseline(measurements, c) for c in cells}
    rps_ratio = {
        (s, c): by_key[(s, c)].result.requests_per_second / bars[c][0] for s in ours for c in cells
    }
    p99_ratio = {(s, c): by_key[(s, c)].result.p99_ms / bars[c][1] for s in ours for c in cells}
    print("\nRatios (b) / (a), per body rows (r) and concurrency (c)")
    table = []
    for server in ours:
        table.append([server, "req/s", *(f"{rps_ratio[(server, c)]:.2f}" for c in cells)])
        table.append([server, "p99", *(f"{p99_ratio[(server, c)]:.2f}" for c in cells)])
    print(format_table(["server", "ratio", *labels], table))

    print(
        f"\nTargets (b) vs (a): req/s >= {TARGET_THROUGHPUT_RATIO:g}x and p99 <= (a)'s in every "
        f"cell; (b) p50 at concurrency 1 <= (c) p50 + {TARGET_FLOOR_MS:g} ms"
    )
    scores = []
    for server in ours:
        rps = {c: rps_ratio[(server, c)] for c in cells}
        p99 = {c: p99_ratio[(server, c)] for c in cells}
        worst_rps = min(rps, key=rps.get)
        worst_p99 = max(p99, key=p99.get)
        rps_met = rps[worst_rps] >= TARGET_THROUGHPUT_RATIO
        p99_met = p99[worst_p99] <= 1.0
        floor_parts, floor_met = [], None
        if 1 in args.connections:
            floor_met = True
            for rows in args.rows:
                p50 = by_key[(server, Cell(rows, 1))].result.p50_ms
                gap = p50 - floors[rows].predict_p50
                floor_met &= gap <= TARGET_FLOOR_MS
                floor_parts.append(f"{rows}r +{gap:.2f} ms")
        met = [rps_met, p99_met] + ([] if floor_met is None else [floor_met])
        print(f"  {server}:")
        print(
            f"    req/s >= {TARGET_THROUGHPUT_RATIO:g}x: {'met' if rps_met else 'NOT met'} "
            f"(lowest {rps[worst_rps]:.2f}x at {worst_rps.rows}r c{worst_rps.connections}; "
            f"missed in {sum(v < TARGET_THROUGHPUT_RATIO for v in rps.values())} of {len(cells)})"
        )
        print(
            f"    p99 <= (a): {'met' if p99_met else 'NOT met'} "
            f"(highest {p99[worst_p99]:.2f}x at {worst_p99.rows}r c{worst_p99.connections}; "
            f"missed in {sum(v > 1.0 for v in p99.values())} of {len(cells)})"
        )
        if floor_parts:
            print(
                f"    p50 at c1 within {TARGET_FLOOR_MS:g} ms of (c): "
                f"{'met' if floor_met else 'NOT met'} ({', '.join(floor_parts)})"
            )
        geometric = math.exp(sum(math.log(v) for v in rps.values()) / len(rps))
        scores.append((sum(met), geometric, server, len(met)))
    best = max(scores)
    print(
        f"\nBest (b) server: {best[2]} ({best[0]} of {best[3]} targets met; req/s {best[1]:.2f}x "
        "(a) on the geometric mean over every cell, the tie-break)"
    )


def main() -> None:
    args = parse_args()
    require_wrk()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="hokusai-bench-inference-"))
    var_dir = workdir / "var"
    for name in ("tmp", "static"):
        (var_dir / name).mkdir(parents=True)
    env = base_env(shared_settings(var_dir, mlflow_port=free_port(), port=free_port()))
    services = Services(log_dir=workdir)
    try:
        if ensure_database(BENCH_DATABASE):
            print(f".. created database {BENCH_DATABASE}", file=sys.stderr)
        print_header(args, env)
        tracking = start_tracking(services, env)
        setup = log_model(env, args.rows)
        with step("waiting for MLflow's start-up work to settle"):
            wait_until_idle([tracking])
        print_servers(args, env, setup)
        scripts = write_scripts(workdir, setup["bodies"])
        with step("pre-flight: (a) and (b) give the same predictions"):
            notes = preflight(services, env, setup, args)
        for note in notes:
            print(f"[pre-flight] {note}")
        floors = measure_floor(env, setup, args.floor_calls)
        totals = Totals()
        measurements = []
        # Rounds take the servers in turn, so a burst of other work hits one round, not a server.
        for round_number in range(1, args.rounds + 1):
            for server in args.servers:
                measurements += measure_server(
                    server, services, env, tracking, setup, scripts, args, totals, round_number
                )
        ok, logged = manage(env, "shell", "-c", COUNT_LOG_SCRIPT).split()[-2:]
        print(
            f"[prediction log] {ok} rows with status 200 ({logged} in all) for the "
            f"{totals.ours_requests} requests wrk completed against (b) plus pre-flight and "
            "warm-up ones (wrk does not count those still in flight when it stops)"
        )
        print_results(measurements, floors, args)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{shell_line(exc.cmd)} failed:\n{exc.stderr}") from None
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every service", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        services.stop_all()
        if args.keep:
            print(f".. logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
