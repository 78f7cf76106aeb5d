"""hokusai_site.cache: the request path's Redis helpers, against the real Redis."""

import threading

import pytest
import redis
from django.conf import settings

from hokusai_site.cache import ThreadScript, redis_client
from tests.conftest import free_port

ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
def client():
    client = redis_client(settings.REDIS_URL, timeout=1)
    yield client
    client.close()


def test_a_thread_script_answers_like_redis_py_and_survives_a_script_flush(client):
    script = ThreadScript(client, ECHO)
    assert script(keys=["k"], args=[1]) == [b"k", b"1"]
    client.script_flush()  # as after a Redis restart: EVALSHA now fails with NOSCRIPT
    assert script(keys=["k"], args=[2]) == [b"k", b"2"]
    assert client.script_exists(script.sha) == [True]


def test_each_thread_has_its_own_connection(client):
    script = ThreadScript(client, ECHO)
    connections = []

    def call() -> None:
        script(keys=["k"], args=[1])
        connections.append(script._local.connection)

    threads = [threading.Thread(target=call) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    call()
    call()
    assert len({id(c) for c in connections[:3]}) == 3
    assert connections[2] is connections[3]


def test_a_failed_call_raises_and_the_next_one_connects_again(client):
    script = ThreadScript(client, ECHO)
    assert script(keys=["k"], args=[1]) == [b"k", b"1"]
    host, port = script._local.connection._sock.getsockname()[:2]
    client.client_kill(f"{host}:{port}")  # Redis drops the script's connection
    with pytest.raises(redis.ConnectionError):
        script(keys=["k"], args=[2])
    assert script(keys=["k"], args=[3]) == [b"k", b"3"]


def test_a_dead_redis_raises_redis_pys_error():
    script = ThreadScript(redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout=0.1), ECHO)
    with pytest.raises(redis.ConnectionError):
        script(keys=["k"], args=[1])
