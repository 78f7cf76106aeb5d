"""Fixtures of the MLflow proxy's tests: MLflow's stand-in and keys that may use the proxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hokusai_site.dns import reset_resolver
from tests.registry.stand_in import Reply, StandIn


@pytest.fixture(scope="module")
def _stand_in_server() -> Iterator[StandIn]:
    server = StandIn()
    yield server
    server.stop()


@pytest.fixture
def stand_in(settings, _stand_in_server) -> Iterator[StandIn]:
    """The stand-in, with nothing received yet, as the MLflow of this test."""
    _stand_in_server.received.clear()
    _stand_in_server.reply = Reply()
    _stand_in_server.answer = None
    settings.MLFLOW_TRACKING_URI = _stand_in_server.url
    reset_resolver()
    yield _stand_in_server
    reset_resolver()


@pytest.fixture
def reader(owner, issue_key) -> str:
    return issue_key(owner, ["mlflow:read"])[1]


@pytest.fixture
def writer(owner, issue_key) -> str:
    return issue_key(owner, ["mlflow:read", "mlflow:write"])[1]
