import pytest
import yaml
from openapi_spec_validator import validate

pytestmark = pytest.mark.django_db


def test_openapi_schema_is_valid_openapi_3(client):
    response = client.get("/api/v1/schema")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate(schema)
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/health" in schema["paths"]


def test_openapi_schema_is_available_as_json(client):
    response = client.get("/api/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    validate(response.json())


def test_docs_page_uses_our_own_assets_not_a_cdn(client):
    response = client.get("/api/v1/docs")
    page = response.content.decode()
    assert response.status_code == 200
    assert "swagger-ui" in page
    assert "/static/drf_spectacular_sidecar/" in page
    assert "cdn" not in page.lower()


def test_version_reports_the_build(client):
    body = client.get("/version").json()
    assert body["name"] == "hokusai"
    assert body["version"] == "0.1.0"
    assert body["django"].startswith("5.2")
    assert body["mlflow"] == "3.17.2"


def test_metrics_count_requests_per_view(client):
    client.get("/version")
    client.get("/version")
    text = client.get("/metrics").content.decode()
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("django_http_requests_total_by_view_transport_method_total{")
        and 'view="version"' in line
    ]
    assert lines and float(lines[0].rsplit(" ", 1)[1]) >= 2
    assert "django_http_requests_latency_seconds_by_view_method_bucket{" in text


def test_admin_is_titled_for_hokusai_and_logs_in(client, django_user_model):
    django_user_model.objects.create_superuser("operator", "op@example.com", "a-long-password-1")
    login_page = client.get("/admin/login/")
    assert "Hokusai" in login_page.content.decode()

    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": "operator", "password": "a-long-password-1"},
        follow=True,
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "Hokusai administration" in page
    assert 'class="hokusai-environment hokusai-environment-test"' in page
    assert "Log out" in page


def test_admin_refuses_a_wrong_password(client, django_user_model):
    django_user_model.objects.create_superuser("operator", "op@example.com", "a-long-password-1")
    response = client.post("/admin/login/", {"username": "operator", "password": "nope"})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_admin_static_assets_are_served(client):
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200
