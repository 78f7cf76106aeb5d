"""A webhook receiver on 127.0.0.1 for tests: records every request and answers each in turn
as scripted (a status code, "timeout", or "redirect:<url>"), then with 200."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    at: float  # time.monotonic()
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    script: list[str] = field(default_factory=list)
    # How long "timeout" answers take: longer than the sender waits.
    hang_seconds: float = 3.0
    # Every answer waits this long first (a slow but healthy receiver).
    delay_seconds: float = 0.0
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per answer: headers and body in separate small writes would wait on
            # delayed ACKs (Nagle), 40 ms each.
            wbufsize = -1

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                answer = receiver._arrive(self.path, headers, body)
                if receiver.delay_seconds:
                    time.sleep(receiver.delay_seconds)
                if answer == "timeout":
                    time.sleep(receiver.hang_seconds)
                    answer = "200"
                status, _, location = answer.partition(":")
                if status == "redirect":
                    self.send_response(302)
                    self.send_header("Location", location)
                else:
                    self.send_response(int(status))
                    if status == "429":
                        self.send_header("Retry-After", "1")
                reply = b'{"ok": true}' if status == "200" else b"receiver says no"
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _arrive(self, path: str, headers: dict[str, str], body: bytes) -> str:
        with self._arrived:
            self.received.append(Received(time.monotonic(), path, headers, body))
            self._arrived.notify_all()
            return self.script.pop(0) if self.script else "200"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """The first `count` requests, once they have arrived."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.received) >= count, timeout):
                raise TimeoutError(f"{len(self.received)} of {count} requests within {timeout}s")
            return list(self.received[:count])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
