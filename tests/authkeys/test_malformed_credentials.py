"""Whatever a client puts in the credential headers, the answer is a 4xx in the error shape."""

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.django_db

# Header values a real HTTP request can carry: visible ASCII, spaces and tabs, some Latin-1.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=300,
)
credential_headers = st.fixed_dictionaries(
    {},
    optional={
        "HTTP_AUTHORIZATION": st.one_of(
            header_text,
            st.builds(
                lambda s, v: f"{s} {v}", st.sampled_from(["Bearer", "ApiKey", "Basic"]), header_text
            ),
        ),
        "HTTP_X_API_KEY": header_text,
        "HTTP_X_ETH_ADDRESS": header_text,
        "HTTP_X_ETH_SIGNATURE": header_text,
        "HTTP_X_ETH_MESSAGE": header_text,
    },
).filter(bool)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(headers=credential_headers)
def test_any_credential_headers_get_a_4xx_problem(headers, settings_override):
    response = Client().get("/api/v1/keys", **headers)
    assert response.status_code in (401, 403, 429), (headers, response.content)
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"]


@pytest.fixture
def settings_override(settings):
    # The failed-credentials limit would turn most examples into 429s; let them reach the
    # checks instead.
    settings.HOKUSAI_AUTH_FAILURE_RATE_LIMIT = 1_000_000
    return settings
