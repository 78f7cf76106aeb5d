"""The framework floor: how fast the production server answers GET /health (no dependency) and
GET /api/v1/health (every dependency check), for each worker model, side by side in one run.

Later benchmarks compare their routes with these numbers. Everything runs on loopback: a
dedicated PostgreSQL database, Redis db 14, a real MLflow server and Celery worker, then one web
server per variant, each loaded by wrk after a short warm-up.

    .venv/bin/python bench/health.py [--duration 10] [--variants default,sync]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BUSY_MACHINE_PERCENT,
    GUNICORN,
    INHERITED_ENV,
    REDIS_HOST_PORT,
    CpuWatch,
    Service,
    Services,
    WrkResult,
    base_env,
    chosen_variants,
    database_url,
    ensure_database,
    format_table,
    free_port,
    group_usage,
    gunicorn_worker_model,
    http_get_json,
    load_arguments,
    log_tail,
    machine_facts,
    require_wrk,
    run_wrk,
    server_log_notes,
    shell_line,
    step,
    stop_on_sigterm,
    wait_for_http,
    wait_for_log,
    wait_until_idle,
    wrk_command,
)

BENCH_DATABASE = "hokusai_bench"
# Its own Redis db, so the benchmark neither sees nor disturbs dev (0) or test (15) data.
BENCH_REDIS_URL = f"redis://{REDIS_HOST_PORT}/14"
ENDPOINTS = ("/health", "/api/v1/health")


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    # Settings on top of the shared environment; empty means the config file's defaults.
    env: dict[str, str] = field(default_factory=dict)
    server: str = "gunicorn"


VARIANTS = [
    Variant("default", "gunicorn config defaults"),
    # gunicorn's rule of thumb for sync workers: 2 x cores + 1 (cores = 2 on the target).
    Variant("sync", "sync, 5 workers", {"GUNICORN_WORKER_CLASS": "sync", "GUNICORN_WORKERS": "5"}),
    Variant(
        "gthread-2x8",
        "gthread, 2 workers x 8 threads",
        {"GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "8"},
    ),
    Variant("uvicorn", "uvicorn ASGI, 2 workers (reference)", server="uvicorn"),
    # What the per-request access log line costs when it is not filtered out.
    Variant("default+log-info", "config defaults, LOG_LEVEL=info", {"LOG_LEVEL": "info"}),
]


@dataclass(frozen=True)
class Measurement:
    variant: str
    endpoint: str
    result: WrkResult
    round: int
    # Share of the machine's CPU that other work (not ours, not wrk) used during the run.
    other_cpu: float
    # The web server's own CPU time (all its processes) per request: unlike req/s, barely
    # moved by other work competing for the cores.
    cpu_ms_per_request: float
    server_processes: int
    server_rss_mib: float


def parse_args() -> argparse.Namespace:
    parser = load_arguments(
        __doc__.split("\n\n")[0], [variant.name for variant in VARIANTS], duration=10
    )
    args = parser.parse_args()
    args.variants = chosen_variants(parser, args, VARIANTS)
    return args


def shared_settings(var_dir: Path, mlflow_port: int) -> dict[str, str]:
    """The production settings every process gets, loopback only."""
    return {
        "ENVIRONMENT": "production",
        "SECRET_KEY": secrets.token_urlsafe(48),  # 64 characters, new every run
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # No TLS proxy in front on loopback; the redirect would turn every answer into a 301.
        "SECURE_SSL_REDIRECT": "false",
        # Per-request info lines would measure the log sink; the log-info variant shows the cost.
        "LOG_LEVEL": "warning",
        "DATABASE_URL": database_url(BENCH_DATABASE),
        "REDIS_URL": BENCH_REDIS_URL,
        "HOKUSAI_VAR_DIR": str(var_dir),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        # Ignore a developer's .env: only what is printed here configures the run.
        "ENV_FILE": "/dev/null",
        # gunicorn.conf.py puts the Prometheus files under the temp dir; keep them in ours.
        "TMPDIR": str(var_dir / "tmp"),
    }


def served_settings(
    var_dir: Path, *, mlflow_port: int, port: int, database: str, redis_url: str
) -> dict[str, str]:
    """shared_settings on a benchmark's own database and Redis db, for a gunicorn it loads."""
    return {
        **shared_settings(var_dir, mlflow_port),
        "DATABASE_URL": database_url(database),
        "REDIS_URL": redis_url,
        "HOKUSAI_BIND": f"127.0.0.1:{port}",
        # Recycling a worker mid-run would charge its start-up to whichever run it hit.
        "GUNICORN_MAX_REQUESTS": "0",
        # Loopback only: no usage reports from MLflow to its telemetry service.
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def server_command(variant: Variant, port: int) -> list[str]:
    if variant.server == "uvicorn":
        return [
            "uvicorn",
            "hokusai_site.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    return GUNICORN


def server_env(variant: Variant, env: dict[str, str], port: int) -> dict[str, str]:
    extra = dict(variant.env)
    if variant.server == "gunicorn":
        extra["HOKUSAI_BIND"] = f"127.0.0.1:{port}"
    else:
        # gunicorn.conf.py sets this for gunicorn; uvicorn's workers need it to share metrics.
        extra["PROMETHEUS_MULTIPROC_DIR"] = str(Path(env["TMPDIR"]) / "prom-uvicorn")
        Path(extra["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    return {**env, **extra}


def effective_model(variant: Variant, env: dict[str, str]) -> str:
    if variant.server != "gunicorn":
        return "uvicorn, 2 workers"
    return gunicorn_worker_model(env)


def print_header(args: argparse.Namespace, env: dict[str, str], port: int) -> dict[str, str]:
    print(
        "Hokusai framework floor: GET /health (no dependency) and GET /api/v1/health (all checks)"
    )
    print("\nMachine")
    for fact in machine_facts():
        print(f"  {fact}")
    print("\nShared environment (every process; nothing else is inherited but PATH, HOME, locale)")
    for key, value in env.items():
        if key in (*INHERITED_ENV, "PATH"):
            continue
        shown = f"<random, {len(value)} chars>" if key == "SECRET_KEY" else value
        print(f"  {key}={shown}")
    print("\nServices")
    print(f"  {shell_line(['python', 'manage.py', 'migrate'])}")
    print(f"  {shell_line(['python', 'manage.py', 'mlflow_server', '--workers', '1'])}")
    print(f"  {shell_line(celery_command())}")
    print("\nWeb server per variant (only the variables that differ are shown)")
    models: dict[str, str] = {}
    for variant in args.variants:
        full_env = server_env(variant, env, port)
        models[variant.name] = effective_model(variant, full_env)
        shown = {key: value for key, value in full_env.items() if env.get(key) != value}
        print(f"  {variant.name}: {variant.description} -> {models[variant.name]}")
        print(f"    {shell_line(server_command(variant, port), shown)}")
    url = f"http://127.0.0.1:{port}<endpoint>"
    print("\nLoad, per variant and endpoint")
    warmup = wrk_command(
        url, threads=args.threads, connections=args.connections, duration_s=args.warmup
    )
    measured = wrk_command(
        url, threads=args.threads, connections=args.connections, duration_s=args.duration
    )
    print(f"  warm-up (not counted): {shell_line(warmup)}")
    print(f"  measured:              {shell_line(measured)}")
    print(flush=True)
    return models


def celery_command() -> list[str]:
    # --pool solo: one process is enough to keep its heartbeat fresh, which is all the
    # celery health check reads; it costs the web server no CPU while measuring.
    return [
        "celery",
        "--app",
        "hokusai_site",
        "worker",
        "--pool",
        "solo",
        # INFO only for its one "ready." line at start-up: no tasks run during the benchmark.
        "--loglevel",
        "INFO",
        "--hostname",
        "bench@%h",
    ]


def start_dependencies(services: Services, env: dict[str, str]) -> None:
    """migrate, then the MLflow server and a Celery worker, left running for every variant."""
    with step("manage.py migrate (our tables and MLflow's)"):
        migrate = services.start("migrate", [sys.executable, "manage.py", "migrate"], env)
        if migrate.process.wait(timeout=600) != 0:
            raise RuntimeError(f"migrate failed:\n{log_tail(migrate.log_path)}")
        services.running.remove(migrate)
    with step("MLflow server"):
        mlflow = services.start(
            "mlflow", [sys.executable, "manage.py", "mlflow_server", "--workers", "1"], env
        )
        wait_for_http(f"{env['MLFLOW_TRACKING_URI']}/health", service=mlflow, timeout=120)
    with step("Celery worker"):
        celery = services.start("celery", celery_command(), env)
        wait_for_log(celery, " ready.", timeout=120)
    with step("waiting for MLflow's and Celery's start-up work to settle"):
        # Their start-up CPU must not land in the first variant's numbers.
        usage = wait_until_idle([mlflow, celery])
    for service in (mlflow, celery):
        footprint = group_usage([service.process.pid])
        print(
            f"[{service.name}] {footprint.processes} processes, "
            f"{footprint.rss_bytes / 2**20:.0f} MiB RSS, "
            f"{footprint.cpu_seconds:.0f} s CPU to start"
        )
    print(f"[dependencies] idle: {usage:.1f}% of a core together\n", flush=True)


def wait_until_ready(base_url: str, server: Service, *, timeout: float = 30.0) -> dict[str, Any]:
    """/api/v1/health until it says ok (the Celery worker's first heartbeat may still be due)."""
    deadline = time.monotonic() + timeout
    while True:
        status, report = http_get_json(f"{base_url}/api/v1/health", timeout=10)
        if (status == 200 and report.get("status") == "ok") or time.monotonic() > deadline:
            break
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{log_tail(server.log_path)}")
        time.sleep(1)
    if status != 200:
        raise RuntimeError(f"/api/v1/health answered {status}: {report}")
    return report


def readiness_summary(report: dict[str, Any]) -> str:
    checks = ", ".join(
        f"{name}={check.get('status')} {check.get('latency_ms')}ms"
        for name, check in report.get("checks", {}).items()
    )
    return f"status={report.get('status')}: {checks}"


def measure_variant(
    variant: Variant,
    services: Services,
    env: dict[str, str],
    port: int,
    args: argparse.Namespace,
    round_number: int,
) -> list[Measurement]:
    base_url = f"http://127.0.0.1:{port}"
    tag = f"[{variant.name}, round {round_number}]" if args.rounds > 1 else f"[{variant.name}]"
    name = f"web-{variant.name}-{round_number}"
    server = services.start(name, server_command(variant, port), env)
    try:
        with step(f"{variant.name}: start"):
            wait_for_http(f"{base_url}/health", service=server, timeout=90)
            report = wait_until_ready(base_url, server)
        print(f"{tag} /api/v1/health answers 200, {readiness_summary(report)}")
        measurements = []
        for endpoint in ENDPOINTS:
            url = base_url + endpoint
            with step(f"{variant.name}: {endpoint} ({args.warmup}s warm-up, {args.duration}s)"):
                # Warm-up: every worker and thread imports its views and opens its connections.
                run_wrk(
                    url, threads=args.threads, connections=args.connections, duration_s=args.warmup
                )
                before = group_usage([server.process.pid])
                watch = CpuWatch.start([service.process.pid for service in services.running])
                result = run_wrk(
                    url,
                    threads=args.threads,
                    connections=args.connections,
                    duration_s=args.duration,
                )
                after = group_usage([server.process.pid])
                other_cpu = watch.other_percent()
            if other_cpu > BUSY_MACHINE_PERCENT:
                print(f"{tag} warning: other work took {other_cpu:.0f}% of the CPU ({endpoint})")
            cpu_ms = 1000 * (after.cpu_seconds - before.cpu_seconds) / max(result.requests, 1)
            measurements.append(
                Measurement(
                    variant=variant.name,
                    endpoint=endpoint,
                    result=result,
                    round=round_number,
                    other_cpu=other_cpu,
                    cpu_ms_per_request=cpu_ms,
                    server_processes=after.processes,
                    server_rss_mib=after.rss_bytes / 2**20,
                )
            )
        for note in server_log_notes(server.log_path):
            print(f"{tag} {note}")
        sys.stdout.flush()
        return measurements
    finally:
        with step(f"{variant.name}: stop"):
            services.stop(server)


def best_rounds(measurements: list[Measurement]) -> dict[tuple[str, str], list[Measurement]]:
    """Each (variant, endpoint)'s rounds, best (highest req/s) first; dict in measuring order."""
    rounds: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        rounds.setdefault((m.variant, m.endpoint), []).append(m)
    for runs in rounds.values():
        runs.sort(key=lambda m: m.result.requests_per_second, reverse=True)
    return rounds


def print_table(measurements: list[Measurement], models: dict[str, str], rounds: int) -> None:
    grouped = best_rounds(measurements)
    # The first variant measured is the baseline of the ratio column.
    first = measurements[0].variant
    headers = ["variant", "endpoint", "req/s", "p50 ms", "p99 ms", "non-2xx", "sock err", "ratio"]
    headers += ["cpu ms/req", "procs", "RSS MiB", "other cpu%"]
    headers += ["req/s of each round"] if rounds > 1 else []
    rows = []
    for endpoint in ENDPOINTS:
        baseline = grouped[(first, endpoint)][0].result.requests_per_second
        for (variant, row_endpoint), runs in grouped.items():
            if row_endpoint != endpoint:
                continue
            best = runs[0]
            r = best.result
            row = [
                variant,
                endpoint,
                f"{r.requests_per_second:.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                str(r.non_2xx),
                str(r.socket_errors),
                f"{r.requests_per_second / baseline:.2f}" if baseline else "-",
                f"{best.cpu_ms_per_request:.2f}",
                str(best.server_processes),
                f"{best.server_rss_mib:.0f}",
                f"{best.other_cpu:.0f}",
            ]
            if rounds > 1:
                in_order = sorted(runs, key=lambda m: m.round)
                row.append(" ".join(f"{m.result.requests_per_second:.0f}" for m in in_order))
            rows.append(row)
    print()
    print(format_table(headers, rows))
    print(f"\nratio: req/s relative to {first} ({models[first]}) on the same endpoint.")
    print("non-2xx: wrk's count of responses >= 400; sock err: connect+read+write+timeout.")
    print(
        "cpu ms/req: the web server's CPU time (all its processes) per request; MLflow, "
        "PostgreSQL and Redis not included. procs, RSS MiB: the server's processes and their "
        "summed RSS after the run."
    )
    print(
        "other cpu%: share of all CPUs used during the run by processes that are not ours "
        "(server, wrk, MLflow, Celery, PostgreSQL, Redis); "
        f"above {BUSY_MACHINE_PERCENT}% the run competed for the CPU and its req/s is low."
    )
    if rounds > 1:
        print(f"Each row is the best of {rounds} rounds (req/s); all rounds are listed.")


def main() -> None:
    args = parse_args()
    require_wrk()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="hokusai-bench-"))
    var_dir = workdir / "var"
    (var_dir / "tmp").mkdir(parents=True)
    # Production serves collected static files from here; health routes need none, but an
    # absent directory makes WhiteNoise warn at every start.
    (var_dir / "static").mkdir()
    env = base_env(shared_settings(var_dir, mlflow_port=free_port()))
    port = free_port()
    services = Services(log_dir=workdir)
    try:
        if ensure_database(BENCH_DATABASE):
            print(f".. created database {BENCH_DATABASE}", file=sys.stderr)
        models = print_header(args, env, port)
        start_dependencies(services, env)
        measurements: list[Measurement] = []
        # Rounds interleave the variants, so a burst of other work hits one round, not a variant.
        for round_number in range(1, args.rounds + 1):
            for variant in args.variants:
                variant_env = server_env(variant, env, port)
                measurements += measure_variant(
                    variant, services, variant_env, port, args, round_number
                )
        print_table(measurements, models, args.rounds)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every service", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        services.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
