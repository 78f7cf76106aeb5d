"""Helpers the benchmarks under bench/ share: free ports, services in their own process groups,
the dedicated benchmark database, wrk runs and their parsed results, CPU and memory accounting
from /proc (Linux only), and plain-text tables.

Nothing here imports Django: the benchmarks configure the processes they start only through
their environment, as a deployment would.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

REPO_ROOT = Path(__file__).resolve().parent.parent
# The interpreter running the benchmark is the venv's; its bin/ holds gunicorn, celery, mlflow.
VENV_BIN = Path(sys.prefix) / "bin"

# The services of the CI machine (see the Makefile's TEST_DATABASE_URL), on loopback only.
POSTGRES_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
REDIS_HOST_PORT = "127.0.0.1:6379"

WRK_MISSING = (
    "wrk is not installed. `make bench` installs it; by hand: "
    "apt-get update && apt-get install -y wrk (Debian/Ubuntu)."
)

# Only what a process needs to run at all is inherited; every setting is passed explicitly so
# a developer's shell (GUNICORN_WORKERS=..., DEBUG=...) cannot change what gets measured.
INHERITED_ENV = ("HOME", "LANG", "LC_ALL", "LC_CTYPE", "USER", "LOGNAME", "TERM", "TZ")


def manage(env: dict[str, str], *arguments: str, timeout: float = 900) -> str:
    """`manage.py <arguments>` in the benchmark's environment; its stdout."""
    completed = subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    return completed.stdout


def python_json(
    arguments: Sequence[str],
    env: dict[str, str],
    *,
    what: str,
    timeout: float,
    stdin: str | None = None,
) -> Any:
    """Runs `python <arguments>` in the benchmark's environment; the last line it prints, as
    JSON. A failure raises with the end of its stderr, named `what`."""
    completed = subprocess.run(
        [sys.executable, *arguments],
        cwd=REPO_ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{completed.stdout[-1000:]}{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def print_machine_and_environment(env: dict[str, str]) -> None:
    print("\nMachine")
    for fact in machine_facts():
        print(f"  {fact}")
    print("\nEnvironment (every process; nothing else is inherited but PATH, HOME, locale)")
    for name, value in env.items():
        if name not in (*INHERITED_ENV, "PATH"):
            shown = f"<random, {len(value)} chars>" if name == "SECRET_KEY" else value
            print(f"  {name}={shown}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(WRK_MISSING)
    return path


def stop_on_sigterm() -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so `finally` blocks stop every service we started."""

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)


def ensure_database(name: str, *, fresh: bool = False) -> bool:
    """Create database `name` on the local PostgreSQL if missing (dropped first when `fresh`);
    True if it was created."""
    import psycopg2
    from psycopg2 import sql

    connection = psycopg2.connect(connect_timeout=3, **POSTGRES_ADMIN)
    try:
        # CREATE DATABASE cannot run inside a transaction.
        connection.autocommit = True
        with connection.cursor() as cursor:
            if fresh:
                cursor.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is not None:
                return False
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    finally:
        connection.close()


def database_url(name: str) -> str:
    admin = POSTGRES_ADMIN
    return f"postgres://{admin['user']}@{admin['host']}:{admin['port']}/{name}"


def base_env(settings: dict[str, str]) -> dict[str, str]:
    """A minimal environment: the venv first on PATH (mlflow_server looks `mlflow` up there)."""
    env = {key: os.environ[key] for key in INHERITED_ENV if key in os.environ}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    env.update(settings)
    return env


def shell_line(command: Sequence[str], env: dict[str, str] | None = None) -> str:
    """`command` as one copy-pasteable shell line, prefixed with `env` assignments."""
    assignments = [f"{key}={shlex.quote(value)}" for key, value in (env or {}).items()]
    return " ".join([*assignments, *(shlex.quote(part) for part in command)])


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log_path: Path


class Services:
    """Starts processes, each in its own process group, and stops them all, newest first."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.running: list[Service] = []

    def start(self, name: str, command: Sequence[str], env: dict[str, str]) -> Service:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            # A new session: Ctrl-C in the terminal reaches only us, and we stop the group
            # (gunicorn/uvicorn/mlflow workers included) ourselves.
            process = subprocess.Popen(
                list(command),
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name=name, process=process, log_path=log_path)
        self.running.append(service)
        return service

    def stop(self, service: Service, *, timeout: float = 40.0) -> None:
        """SIGTERM to the whole group; SIGKILL if it outlives `timeout` (gunicorn waits 30 s)."""
        if service in self.running:
            self.running.remove(service)
        process = service.process
        if process.poll() is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # Workers may outlive their master for a moment; leave nothing behind.
        _signal_group(process.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for service in reversed(list(self.running)):
            self.stop(service)


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def wait_for_log(service: Service, text: str, *, timeout: float) -> None:
    """Wait until `text` shows in the service's log (e.g. Celery's "ready." line)."""
    deadline = time.monotonic() + timeout
    while text not in service.log_path.read_text(errors="replace"):
        if service.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"{service.name} did not log {text!r} (exit code {service.process.poll()}); "
                f"its log ends:\n{log_tail(service.log_path)}"
            )
        time.sleep(0.2)


@dataclass(frozen=True)
class GroupUsage:
    processes: int
    cpu_seconds: float  # user + system, over the processes' lifetimes
    rss_bytes: int  # summed: pages shared between processes count once per process


def group_usage(pgids: Sequence[int]) -> GroupUsage:
    """CPU and memory of every process in the given process groups, from /proc."""
    wanted = set(pgids)
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    page_size = os.sysconf("SC_PAGE_SIZE")
    processes, ticks, rss_pages = 0, 0, 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # The command name may hold spaces and parentheses; fields follow the last ")".
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) in wanted:  # pgrp
            processes += 1
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
            rss_pages += int(fields[21])
    return GroupUsage(processes, ticks / ticks_per_second, rss_pages * page_size)


# Shared daemons our requests use; their CPU counts as ours, not as other work.
SERVICE_DAEMONS = frozenset({"postgres", "redis-server"})


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot, from /proc/stat (steal counts as busy)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]  # user..steal
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def ours_cpu_seconds(pgids: Sequence[int]) -> float:
    """CPU seconds of our process groups, the shared daemons, and our exited children (wrk)."""
    wanted = set(pgids)
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[2]) in wanted or name in SERVICE_DAEMONS:
            ticks += int(fields[11]) + int(fields[12])
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ticks / os.sysconf("SC_CLK_TCK") + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class CpuWatch:
    """How much of the machine other work used while we measured.

    On a shared machine other work slows a run down without any sign in wrk's output; this
    says how much of the CPU it took (all CPUs = 100%).
    """

    pgids: tuple[int, ...]
    started: float
    machine_busy: float
    ours: float

    @classmethod
    def start(cls, pgids: Sequence[int]) -> CpuWatch:
        return cls(tuple(pgids), time.monotonic(), machine_busy_seconds(), ours_cpu_seconds(pgids))

    def other_percent(self) -> float:
        elapsed = (time.monotonic() - self.started) * (os.cpu_count() or 1)
        machine = machine_busy_seconds() - self.machine_busy
        ours = ours_cpu_seconds(self.pgids) - self.ours
        return max(0.0, 100.0 * (machine - ours) / elapsed) if elapsed else 0.0


def wait_until_idle(
    services: Sequence[Service],
    *,
    percent_of_a_core: float = 5.0,
    window: float = 3.0,
    timeout: float = 180.0,
) -> float:
    """Wait until the services together use less than `percent_of_a_core` over `window`.

    Servers answer /health before their start-up work is over (MLflow 3 boots its job-runner
    processes after it listens); measuring then would charge that work to the first variant.
    Returns the last usage seen, in percent of one core.
    """
    pgids = [service.process.pid for service in services]
    deadline = time.monotonic() + timeout
    while True:
        before = group_usage(pgids).cpu_seconds
        time.sleep(window)
        usage = 100.0 * (group_usage(pgids).cpu_seconds - before) / window
        if usage < percent_of_a_core or time.monotonic() > deadline:
            return usage


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


_http = urllib3.PoolManager(retries=False)


def http_get(url: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    response = _http.request("GET", url, timeout=timeout, preload_content=True)
    return response.status, response.data


def http_get_json(url: str, *, timeout: float = 5.0) -> tuple[int, Any]:
    status, body = http_get(url, timeout=timeout)
    return status, json.loads(body)


def wait_for_http(url: str, *, service: Service, timeout: float) -> None:
    """Poll `url` until it answers 200; fail early, with the log, if the service exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with {service.process.returncode} before {url} "
                f"answered; its log ends:\n{log_tail(service.log_path)}"
            )
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(
        f"{url} did not answer 200 within {timeout:g}s; {service.name}'s log ends:\n"
        f"{log_tail(service.log_path)}"
    )


# --- wrk -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int  # wrk counts statuses >= 400 ("Non-2xx or 3xx responses")
    socket_errors: int  # connect + read + write + timeout


def wrk_command(
    url: str,
    *,
    threads: int,
    connections: int,
    duration_s: int,
    headers: Sequence[str] = (),
    script: Path | None = None,
) -> list[str]:
    """`headers`: "Name: value" lines sent with every request; `script`: a Lua script (a POST
    body, say)."""
    options = [part for header in headers for part in ("-H", header)]
    if script is not None:
        options += ["-s", str(script)]
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        *options,
        url,
    ]


def run_wrk(url: str, *, duration_s: int, **options: Any) -> WrkResult:
    """wrk_command(url, duration_s=duration_s, **options), run; its figures."""
    command = wrk_command(url, duration_s=duration_s, **options)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 30, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{shell_line(command)} failed:\n{completed.stdout}{completed.stderr}")
    return parse_wrk(completed.stdout)


_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def duration_ms(text: str) -> float:
    """A wrk duration ("812.00us", "1.25ms", "2.01s") in milliseconds."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _TIME_UNITS_MS[match[2]]


def parse_wrk(output: str) -> WrkResult:
    """The numbers we report from `wrk --latency` output."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output has no match for {pattern!r}:\n{output}")
        return match

    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        requests=int(find(r"^\s*(\d+) requests in")[1]),
        requests_per_second=float(find(r"^Requests/sec:\s+([0-9.]+)")[1]),
        p50_ms=duration_ms(find(r"^\s+50(?:\.0+)?%\s+(\S+)")[1]),
        p99_ms=duration_ms(find(r"^\s+99(?:\.0+)?%\s+(\S+)")[1]),
        # wrk prints these lines only when the count is not zero.
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(count) for count in sockets.groups()) if sockets else 0,
    )


# --- Reporting -----------------------------------------------------------------------------------


def machine_facts() -> list[str]:
    def version(distribution: str) -> str:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    cpu_model = "unknown"
    memory = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) // 1024} MiB"
                break
    except OSError:
        pass
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    wrk_version = (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?"
    usable_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return [
        f"nproc {usable_cpus} (os.cpu_count {os.cpu_count()}), {cpu_model}, {memory}",
        f"{platform.system()} {platform.release()}",
        f"python {platform.python_version()}, django {version('django')}, "
        f"gunicorn {version('gunicorn')}, uvicorn {version('uvicorn')}, "
        f"granian {version('granian')}, mlflow {version('mlflow')}, celery {version('celery')}",
        wrk_version.strip(),
        "wrk runs on the same cores as the servers (loopback), so it takes its share of CPU.",
    ]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain table: the first two columns (names) left-aligned, the numbers right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(cell).ljust(width) if index < 2 else str(cell).rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


@contextmanager
def step(message: str) -> Iterator[None]:
    """Progress on stderr with timing, so stdout stays the report."""
    started = time.monotonic()
    print(f".. {message}", file=sys.stderr, flush=True)
    yield
    print(f"   done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)


# Above this, other work on the machine is competing with the benchmark.
BUSY_MACHINE_PERCENT = 10
GUNICORN = ["gunicorn", "--config", "deploy/gunicorn.conf.py", "hokusai_site.wsgi"]


def server_log_notes(log_path: Path) -> list[str]:
    """Worker recycling (max_requests) and errors during the run, from the server's log."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    notes = []
    restarts = text.count("Autorestarting worker")
    if restarts:
        notes.append(f"{restarts} worker restart(s) from max_requests during the run")
    errors = [
        line
        for line in text.splitlines()
        if "Traceback" in line or '"level": "ERROR"' in line or "[ERROR]" in line
    ]
    notes.extend(f"log: {line[:200]}" for line in errors[:5])
    return notes


def load_arguments(description: str, variant_names: list[str], *, duration: int):
    """The options every benchmark takes: wrk's load and which variants to run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=int, default=duration, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat all variants this many times, interleaved; each row is the variant's best "
        "round (other work on the machine only ever slows a run down)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(variant_names),
        help=f"comma-separated; the first is the baseline (from: {', '.join(variant_names)})",
    )
    return parser


def chosen_variants(parser, args, variants: Sequence[Any]) -> list[Any]:
    """Checks the load options and returns the chosen variants in the order given."""
    if min(args.duration, args.warmup, args.threads, args.connections, args.rounds) < 1:
        parser.error("--duration, --warmup, --threads, --connections and --rounds must be >= 1")
    names = [variant.name for variant in variants]
    # dict.fromkeys: de-duplicated, order kept (the first is the baseline).
    chosen = list(dict.fromkeys(name.strip() for name in args.variants.split(",") if name.strip()))
    unknown = sorted(set(chosen) - set(names))
    if unknown or not chosen:
        parser.error(f"unknown variant(s) {', '.join(unknown) or '(none given)'}; known: {names}")
    return [next(v for v in variants if v.name == name) for name in chosen]


def gunicorn_worker_model(env: dict[str, str]) -> str:
    """What gunicorn will really run: the config file evaluated with this environment (in a
    child process, as the file sets environment variables; --print-config loads the app)."""
    script = (
        "import runpy; c = runpy.run_path('deploy/gunicorn.conf.py'); "
        "print(c['worker_class'], c['workers'], c['threads'])"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"cannot read deploy/gunicorn.conf.py:\n{completed.stderr}")
    worker_class, workers, threads = completed.stdout.split()
    if worker_class == "hokusai_site.gunicorn_workers.ThreadWorker":
        worker_class = "gthread"  # gunicorn's, as the config runs it
    model = f"{worker_class}, {workers} workers"
    return model + (f" x {threads} threads" if worker_class == "gthread" else "")
