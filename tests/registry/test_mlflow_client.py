"""registry.mlflow against a stand-in tracking server that drops a kept-alive connection the
moment it is reused, as MLflow's uvicorn does to connections idle for 5 s."""

from __future__ import annotations

import socket
import threading

import pytest

from registry import mlflow

ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\n{}"
)


class DroppingServer:
    """Answers the first request on each connection and closes it when a second one comes."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                if _read_request(connection):
                    self.requests += 1
                    connection.sendall(ANSWER)
                connection.recv(65536)  # the reuse: dropped unanswered

    def close(self):
        self.listener.close()


def _read_request(connection: socket.socket) -> bytes:
    """One whole request, its body included (a client may send the body in a later packet)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return data


@pytest.fixture
def dropping_server(settings):
    server = DroppingServer()
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{server.port}"
    mlflow._clients.clear()
    yield server
    server.close()
    mlflow._clients.clear()


def test_a_get_on_a_dropped_connection_goes_again_on_a_fresh_one(dropping_server):
    assert mlflow.call("GET", "registered-models/get", params={"name": "m"}) == {}
    assert mlflow.call("GET", "registered-models/get", params={"name": "m"}) == {}
    assert dropping_server.requests == 2


def test_a_post_on_a_dropped_connection_is_not_sent_twice(dropping_server):
    assert mlflow.call("POST", "registered-models/create", body={"name": "m"}) == {}
    with pytest.raises(mlflow.MlflowUnavailable):
        mlflow.call("POST", "registered-models/create", body={"name": "m"})
    assert dropping_server.requests == 1
