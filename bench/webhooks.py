"""Webhook delivery with every guarantee on, side by side with the floor, in one run:

(a) deliveries/s: EVENTS events committed at once, each delivered to one endpoint on a local
    receiver by Celery workers (claim, sign, POST, record, breaker), beside the floor: a plain
    Python loop POSTing the same signed payloads with a pooled urllib3 client
    (target: >= 0.5x the floor);
(b) event commit -> receiver arrival, p50 and p99, for events committed one by one at a steady
    rate (target: p50 < 100 ms).

Each worker configuration is measured; README recommends the best. Everything runs on loopback
with the production settings: a dedicated PostgreSQL database, Redis db 9, `celery beat` (the
sweep), and a receiver process that answers 200 at once.

    .venv/bin/python bench/webhooks.py [--events 2000] [--latency-events 300] [--rate 50]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import health
from _common import (
    REDIS_HOST_PORT,
    Services,
    base_env,
    database_url,
    ensure_database,
    format_table,
    free_port,
    group_usage,
    http_get_json,
    machine_facts,
    manage,
    shell_line,
    step,
    stop_on_sigterm,
    wait_for_log,
)

BENCH_DATABASE = "hokusai_bench_webhooks"
BENCH_REDIS_URL = f"redis://{REDIS_HOST_PORT}/9"
TARGET_RATIO = 0.5
TARGET_P50_MS = 100.0


@dataclass(frozen=True)
class WorkerModel:
    name: str
    processes: int  # worker processes started side by side
    arguments: tuple[str, ...]


WORKER_MODELS = [
    WorkerModel("threads 8", 1, ("--pool", "threads", "--concurrency", "8")),
    WorkerModel("prefork 2", 1, ("--pool", "prefork", "--concurrency", "2")),
    WorkerModel("2 x threads 4", 2, ("--pool", "threads", "--concurrency", "4")),
]

# The receiver: asyncio, HTTP/1.1 keep-alive, 200 at once; records when each event arrived.
RECEIVER = r"""
import asyncio, json, re, sys, time
arrivals = {}
EVENT_ID = re.compile(rb'"event_id":"([0-9a-f-]+)"')

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1)) \
                if b"ontent-" in head else 0
            body = await reader.readexactly(length) if length else b""
            if head.startswith(b"GET /arrivals"):
                reply = json.dumps(arrivals).encode()
                arrivals.clear()
            else:
                match = EVENT_ID.search(body)
                if match:
                    arrivals.setdefault(match.group(1).decode(), time.time())
                reply = b"ok"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(reply) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=512)
    print("receiver ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""

# Run by `manage.py shell`: the endpoint, then events; prints {event_id: commit time}.
SETUP = """
from django.contrib.auth import get_user_model
from authkeys.principals import caller_from_user
from webhooks import services
from webhooks.models import WebhookEndpoint
WebhookEndpoint.objects.all().delete()
owner, _ = get_user_model().objects.get_or_create(username="bench-webhooks")
services.endpoint_create(actor=caller_from_user(owner), url={url!r},
                         event_types=["model_registered"])
"""
GENERATE = """
import json, time
from django.db import transaction
from webhooks.outbox import record_events
commits = {{}}

def event(number):
    model = {{"id": "bench", "name": "bench-model", "token_symbol": "BENCH",
             "version": str(number), "status": "registered", "run_id": "r", "user_id": "bench"}}
    data = {{"metric_name": "accuracy", "baseline_value": 0.8, "current_value": 0.9,
            "improvement_percentage": 12.5, "proposal_identifier": "p", "source": "models:/m"}}
    (recorded,) = record_events(event_types=["model_registered"], model=model, data=data)
    return str(recorded.event_id)

# Each commit time is taken by an on_commit callback registered before the outbox's own, so it
# runs first: the moment COMMIT returns, before the Celery messages go out.
if {at_once}:
    stamp = []
    with transaction.atomic():
        transaction.on_commit(lambda: stamp.append(time.time()))
        ids = [event(number) for number in range({count})]
    commits = dict.fromkeys(ids, stamp[0])
else:
    started = time.monotonic()
    for number in range({count}):
        time.sleep(max(0.0, started + number / {rate} - time.monotonic()))
        stamp = []
        with transaction.atomic():
            transaction.on_commit(lambda: stamp.append(time.time()))
            event_id = event(number)
        commits[event_id] = stamp[0]
print(json.dumps(commits))
"""

# The floor: the same signed body per event, POSTed one after another on one pooled client.
FLOOR = """
import base64, hashlib, hmac, json, sys, time, uuid
import urllib3
url, count = sys.argv[1], int(sys.argv[2])
key = base64.b64decode("c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1sb25nLi4uLg==")
pool = urllib3.PoolManager(maxsize=1, retries=False, timeout=urllib3.Timeout(connect=10, read=10))
started = time.monotonic()
for number in range(count):
    event_id = str(uuid.uuid4())
    body = json.dumps({"event_type": "model_registered", "event_id": event_id,
        "timestamp": "2026-11-22T00:00:00Z", "source": "hokusai",
        "model": {"id": "bench", "name": "bench-model", "token_symbol": "BENCH",
                  "version": str(number), "status": "registered", "run_id": "r",
                  "user_id": "bench"},
        "data": {"metric_name": "accuracy", "baseline_value": 0.8, "current_value": 0.9,
                 "improvement_percentage": 12.5, "proposal_identifier": "p",
                 "source": "models:/m"}}, separators=(",", ":")).encode()
    webhook_id, timestamp = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()
    response = pool.request("POST", url, body=body, headers={
        "Content-Type": "application/json", "webhook-id": webhook_id,
        "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature}",
        "X-Hokusai-Signature": "sha256=" + hmac.digest(key, body, hashlib.sha256).hex()})
    assert response.status == 200, response.status
print(json.dumps({"seconds": time.monotonic() - started}))
"""


@dataclass(frozen=True)
class Throughput:
    model: str
    per_second: float
    seconds: float
    worker_cpu_ms: float  # per delivery, the worker processes


@dataclass(frozen=True)
class Latency:
    model: str
    p50_ms: float
    p99_ms: float
    max_ms: float


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events for (a)")
    parser.add_argument("--latency-events", type=int, default=300, help="events for (b)")
    parser.add_argument("--rate", type=float, default=50.0, help="events/s for (b)")
    parser.add_argument(
        "--models",
        default=",".join(model.name for model in WORKER_MODELS),
        help="comma-separated worker configurations to measure",
    )
    args = parser.parse_args()
    names = [name.strip() for name in args.models.split(",")]
    unknown = set(names) - {model.name for model in WORKER_MODELS}
    if unknown:
        parser.error(f"unknown worker configuration(s): {', '.join(sorted(unknown))}")
    args.models = [model for model in WORKER_MODELS if model.name in names]
    return args


def django(env: dict[str, str], code: str) -> str:
    """The last line `code` prints, run by `manage.py shell`."""
    return manage(env, "shell", "-c", code).strip().splitlines()[-1]


def arrivals(receiver_url: str) -> dict[str, float]:
    status, body = http_get_json(f"{receiver_url}/arrivals")
    assert status == 200
    return body


def wait_for_arrivals(receiver_url: str, expected: set[str], timeout: float) -> dict[str, float]:
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.update(arrivals(receiver_url))
        if expected <= seen.keys():
            return seen
        time.sleep(0.2)
    raise TimeoutError(f"{len(expected - seen.keys())} of {len(expected)} events never arrived")


def start_workers(services: Services, model: WorkerModel, env: dict[str, str]) -> list:
    workers = []
    for index in range(model.processes):
        command = [
            "celery",
            "--app",
            "hokusai_site",
            "worker",
            "--loglevel",
            "WARNING",
            "--hostname",
            f"bench{index}@%h",
            *model.arguments,
        ]
        worker = services.start(f"worker-{model.name}-{index}".replace(" ", ""), command, env)
        workers.append(worker)
    # Ready when the warm-up's deliveries arrive (their "ready." line is an INFO one).
    return workers


def measure(model: WorkerModel, services: Services, env, receiver_url, args):
    workers = start_workers(services, model, env)
    pgids = [worker.process.pid for worker in workers]
    try:
        with step(f"{model.name}: warm-up, then (a) {args.events} events committed at once"):
            warmup = json.loads(django(env, GENERATE.format(at_once=True, count=50, rate=0)))
            wait_for_arrivals(receiver_url, set(warmup), timeout=60)
            cpu_before = group_usage(pgids).cpu_seconds
            commits = json.loads(
                django(env, GENERATE.format(at_once=True, count=args.events, rate=0))
            )
            seen = wait_for_arrivals(receiver_url, set(commits), timeout=600)
            cpu_ms = 1000 * (group_usage(pgids).cpu_seconds - cpu_before) / args.events
        seconds = max(seen[event_id] for event_id in commits) - min(commits.values())
        throughput = Throughput(model.name, args.events / seconds, seconds, cpu_ms)
        with step(f"{model.name}: (b) {args.latency_events} events at {args.rate:g}/s"):
            commits = json.loads(
                django(
                    env,
                    GENERATE.format(at_once=False, count=args.latency_events, rate=args.rate),
                )
            )
            seen = wait_for_arrivals(receiver_url, set(commits), timeout=120)
        waits = sorted(1000 * (seen[event_id] - at) for event_id, at in commits.items())
        latency = Latency(
            model.name,
            statistics.median(waits),
            waits[min(len(waits) - 1, int(0.99 * len(waits)))],
            waits[-1],
        )
        return throughput, latency
    finally:
        for worker in workers:
            services.stop(worker)


def floor(receiver_url: str, events: int) -> Throughput:
    with step(f"floor: {events} signed POSTs, one pooled client"):
        completed = subprocess.run(
            [sys.executable, "-c", FLOOR, f"{receiver_url}/hook", str(events)],
            capture_output=True,
            text=True,
            check=True,
        )
    seconds = json.loads(completed.stdout)["seconds"]
    return Throughput("floor (plain loop)", events / seconds, seconds, 0.0)


def main() -> None:
    args = arguments()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="hokusai-bench-webhooks-"))
    var_dir = workdir / "var"
    (var_dir / "tmp").mkdir(parents=True)
    settings = {
        **health.shared_settings(var_dir, mlflow_port=free_port()),
        "DATABASE_URL": database_url(BENCH_DATABASE),
        "REDIS_URL": BENCH_REDIS_URL,
        # The receiver is on loopback; production refuses that (the SSRF guard).
        "HOKUSAI_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    env = base_env(settings)
    services = Services(log_dir=workdir)
    receiver_port = free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    try:
        if ensure_database(BENCH_DATABASE):
            print(f".. created database {BENCH_DATABASE}", file=sys.stderr)
        print("Hokusai webhooks: deliveries by Celery workers beside a plain sending loop")
        print("\nMachine")
        for fact in machine_facts():
            print(f"  {fact}")
        print("\nWorker configurations (each with `celery beat` running the sweep)")
        for model in args.models:
            command = ["celery", "--app", "hokusai_site", "worker", *model.arguments]
            print(f"  {model.name}: {model.processes} x {shell_line(command)}")
        with step("migrate, receiver, endpoint, beat"):
            manage(env, "migrate")
            receiver = services.start(
                "receiver", [sys.executable, "-c", RECEIVER, str(receiver_port)], env
            )
            wait_for_log(receiver, "receiver ready", timeout=10)
            django(env, SETUP.format(url=f"{receiver_url}/hook"))
            beat_command = ["celery", "--app", "hokusai_site", "beat", "--loglevel", "WARNING"]
            beat_command += ["--schedule", str(var_dir / "celerybeat-schedule")]
            services.start("beat", beat_command, env)
        results = [measure(model, services, env, receiver_url, args) for model in args.models]
        floor_result = floor(receiver_url, args.events)
        report(results, floor_result, args)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{shell_line(exc.cmd)} failed:\n{exc.stderr}") from None
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every service", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        services.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def report(results, floor_result: Throughput, args: argparse.Namespace) -> None:
    print(f"\n(a) {args.events} events committed at once, delivered to one receiver")
    rows = [
        [
            floor_result.model,
            f"{floor_result.per_second:.0f}",
            f"{floor_result.seconds:.2f}",
            "-",
            "1.00",
        ]
    ]
    for throughput, _ in results:
        rows.append(
            [
                throughput.model,
                f"{throughput.per_second:.0f}",
                f"{throughput.seconds:.2f}",
                f"{throughput.worker_cpu_ms:.2f}",
                f"{throughput.per_second / floor_result.per_second:.2f}",
            ]
        )
    headers = ["sender", "deliveries/s", "seconds", "worker cpu ms/delivery", "ratio"]
    print(format_table(headers, rows))
    print(f"\n(b) commit -> arrival, {args.latency_events} events at {args.rate:g}/s")
    rows = [
        [latency.model, f"{latency.p50_ms:.1f}", f"{latency.p99_ms:.1f}", f"{latency.max_ms:.1f}"]
        for _, latency in results
    ]
    print(format_table(["workers", "p50 ms", "p99 ms", "max ms"], rows))
    print("\nTargets")
    for throughput, latency in results:
        ratio = throughput.per_second / floor_result.per_second
        print(
            f"  {throughput.model}: (a) {ratio:.2f} of the floor, target >= {TARGET_RATIO}: "
            f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}; (b) p50 {latency.p50_ms:.1f} ms, "
            f"target < {TARGET_P50_MS:g}: {'met' if latency.p50_ms < TARGET_P50_MS else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
