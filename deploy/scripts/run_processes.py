"""Runs the processes of a Procfile together (`make run`).

Each line of output is prefixed with its process name. Ctrl-C, SIGTERM, or any process exiting
stops them all: SIGTERM to each process group, SIGKILL only after a grace period. (honcho does
the rest of this too, but kills after a fixed 5 s, shorter than a Celery worker's warm shutdown
on a busy 2-core machine.)

Usage: run_processes.py PROCFILE
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

GRACE_SECONDS = 20.0
_output_lock = threading.Lock()


def read_procfile(path: Path) -> list[tuple[str, str]]:
    entries = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            entries.append((name.strip(), command.strip()))
    return entries


def say(name: str, text: str, width: int) -> None:
    with _output_lock:
        sys.stdout.write(f"{time.strftime('%H:%M:%S')} {name:<{width}} | {text}\n")
        sys.stdout.flush()


def pump_output(name: str, process: subprocess.Popen, width: int) -> None:
    for raw in process.stdout:
        say(name, raw.decode(errors="replace").rstrip("\n"), width)


def signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def wait_for_group(process: subprocess.Popen, deadline: float) -> bool:
    """Waits until every process of the group has exited (the shell may go before its child)."""
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def main() -> int:
    entries = read_procfile(Path(sys.argv[1]))
    width = max(len(name) for name, _ in [*entries, ("system", "")])
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())

    processes: dict[str, subprocess.Popen] = {}
    for name, command in entries:
        # A session of its own per process: signals reach its children too, and the terminal's
        # Ctrl-C reaches only us, so every process gets exactly one orderly SIGTERM.
        processes[name] = subprocess.Popen(  # noqa: S602
            command,
            shell=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Lines appear as they are written, not when a pipe buffer fills.
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(
            target=pump_output, args=(name, processes[name], width), daemon=True
        ).start()
        say("system", f"{name} started (pid {processes[name].pid}): {command}", width)

    exit_code = 0
    while not stop_requested.is_set():
        exited = [(name, p.returncode) for name, p in processes.items() if p.poll() is not None]
        if exited:
            name, exit_code = exited[0]
            say("system", f"{name} exited with {exit_code}; stopping the others", width)
            break
        stop_requested.wait(0.2)
    else:
        say("system", "stopping all processes", width)

    for process in processes.values():
        signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for name, process in processes.items():
        if not wait_for_group(process, deadline):
            say("system", f"{name} ignored SIGTERM for {GRACE_SECONDS:g}s; killing it", width)
            signal_group(process, signal.SIGKILL)
            wait_for_group(process, time.monotonic() + 5)
        say("system", f"{name} stopped", width)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
