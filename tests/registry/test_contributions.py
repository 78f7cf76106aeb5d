"""Data contributions: files and JSON rows kept in S3 (moto in server mode, a separate process on
a loopback port) or on local disk, with their rows, limits, duplicates and failures."""

from __future__ import annotations

import hashlib
import json
import os
import random
import runpy
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import boto3
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile
from django.db import DatabaseError
from eth_account import Account

from authkeys.principals import caller_from_user
from registry import audit, contributions
from registry.models import AuditLog, Contribution, Model
from tests.authkeys.test_eth_auth import signed_headers
from tests.conftest import REPO_ROOT, VENV_BIN, free_port, stop_process, wait_for_http

pytestmark = pytest.mark.django_db

ADMIN_URL = "/admin/registry/contribution/"
# What boto3 needs to sign requests to moto, and nothing that could lead it to real credentials.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
}
CSV = b"age,churned\n31,0\n47,1\n"


def url(model_id: str) -> str:
    return f"/api/v1/models/{model_id}/contributions"


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def upload(client, auth: dict, data: bytes, *, model_id="churn", name="data.csv", **extra):
    file = SimpleUploadedFile(name, data, content_type=extra.pop("file_type", "text/csv"))
    return client.post(url(model_id), {"file": file}, **auth, **extra)


def send_rows(client, auth: dict, rows, *, model_id="churn", **extra):
    return client.post(
        url(model_id), {"rows": rows}, content_type="application/json", **auth, **extra
    )


def problem(response) -> tuple[int, str]:
    assert response["Content-Type"] == "application/problem+json"
    return response.status_code, response.json()["code"]


def loaded_settings(**env: str) -> dict:
    """hokusai_site/settings.py evaluated afresh with `env`: what start-up would build."""
    with mock.patch.dict(os.environ, env):
        for name in {"AWS_STORAGE_BUCKET_NAME", "AWS_S3_ENDPOINT_URL"} - set(env):
            os.environ.pop(name, None)
        return runpy.run_path(str(REPO_ROOT / "hokusai_site" / "settings.py"))


def make_model(model_id: str, owner) -> Model:
    return Model.objects.create(
        model_id=model_id,
        token_symbol=model_id.upper(),
        name=f"{model_id} model",
        owner_user=owner,
        metric_name="accuracy",
        metric_direction="higher",
        baseline_value=0.8,
    )


@pytest.fixture
def model(owner) -> Model:
    return make_model("churn", owner)


@pytest.fixture
def owner_auth(owner, issue_key) -> dict:
    return bearer(issue_key(owner, ["contributions:write"])[1])


@pytest.fixture
def outsider_auth(outsider, issue_key) -> dict:
    return bearer(issue_key(outsider, ["contributions:write"])[1])


@pytest.fixture(autouse=True)
def local_storage(settings, tmp_path) -> Path:
    """Contributions go to the local storage of settings.py, in a directory of the test's own
    (the S3 tests switch to a bucket)."""
    location = tmp_path / "media"
    local = loaded_settings()["STORAGES"]["contributions"]
    assert local["BACKEND"] == "django.core.files.storage.FileSystemStorage"
    settings.STORAGES = {
        **settings.STORAGES,
        "contributions": {**local, "OPTIONS": {**local["OPTIONS"], "location": location}},
    }
    return location


def files_in(location: Path) -> dict[str, bytes]:
    return {
        path.relative_to(location).as_posix(): path.read_bytes()
        for path in location.rglob("*")
        if path.is_file()
    }


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory) -> Iterator[str]:
    """moto's S3 in server mode: its own process on a loopback port, spoken to over HTTP."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/moto-api/", timeout=60, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


@dataclass
class Bucket:
    client: object
    name: str

    def objects(self) -> dict[str, bytes]:
        listed = self.client.list_objects_v2(Bucket=self.name).get("Contents", [])
        return {
            item["Key"]: self.client.get_object(Bucket=self.name, Key=item["Key"])["Body"].read()
            for item in listed
        }


def use_s3(settings, **env: str) -> None:
    """The contribution storage wired as settings.py wires it for these variables."""
    wired = loaded_settings(**env)["STORAGES"]["contributions"]
    settings.STORAGES = {**settings.STORAGES, "contributions": wired}


@pytest.fixture
def s3(moto_server, settings, monkeypatch) -> Bucket:
    """A fresh bucket on the moto server, the contribution storage pointed at it."""
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = Bucket(
        client=boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1"),
        name=f"contributions-{uuid.uuid4().hex[:12]}",
    )
    bucket.client.create_bucket(Bucket=bucket.name)
    use_s3(settings, AWS_STORAGE_BUCKET_NAME=bucket.name, AWS_S3_ENDPOINT_URL=moto_server)
    return bucket


# --- storing ------------------------------------------------------------------------------------


def test_a_file_upload_lands_in_the_bucket_and_is_recorded_with_its_hash(
    client, model, owner, owner_auth, s3
):
    response = upload(client, owner_auth, CSV, name="churn-2024.csv")

    assert response.status_code == 201, response.content
    body = response.json()
    row = Contribution.objects.get()
    assert body["id"] == row.pk and body["model_id"] == "churn"
    assert body["sha256"] == row.sha256 == hashlib.sha256(CSV).hexdigest()
    assert (body["size"], body["content_type"], body["original_name"]) == (
        len(CSV),
        "text/csv",
        "churn-2024.csv",
    )
    assert (body["contributor"], body["status"]) == ("owner", "received")
    assert (row.contributor_user, row.contributor_identity) == (owner, None)
    assert row.storage_name.startswith("contributions/churn/")
    assert row.storage_name.endswith(".csv")
    assert s3.objects() == {row.storage_name: CSV}
    head = s3.client.head_object(Bucket=s3.name, Key=row.storage_name)
    assert head["ContentType"] == "text/csv"
    entry = AuditLog.objects.get(action="contribution.received")
    assert (entry.actor_kind, entry.actor_user, entry.target_id) == ("api_key", owner, str(row.pk))
    assert entry.details["sha256"] == row.sha256 and entry.details["model"] == "churn"


def test_json_rows_are_stored_as_json_lines(client, model, owner_auth, s3):
    rows = [{"age": 31, "churned": False}, {"age": 47, "city": "Zürich", "tags": ["a", "b"]}]

    response = send_rows(client, owner_auth, rows)

    assert response.status_code == 201, response.content
    row = Contribution.objects.get()
    stored = s3.objects()[row.storage_name]
    assert [json.loads(line) for line in stored.decode().splitlines()] == rows
    assert stored.endswith(b"\n") and row.size == len(stored)
    assert (row.content_type, row.original_name) == ("application/jsonl", "")
    assert row.storage_name.endswith(".jsonl")
    head = s3.client.head_object(Bucket=s3.name, Key=row.storage_name)
    assert head["ContentType"] == "application/jsonl"


def test_without_a_bucket_the_file_is_kept_in_local_storage(
    client, model, owner_auth, local_storage
):
    response = upload(client, owner_auth, CSV, name="notes.txt", file_type="text/plain")

    assert response.status_code == 201, response.content
    row = Contribution.objects.get()
    assert files_in(local_storage) == {row.storage_name: CSV}
    assert row.storage_name.endswith(".txt") and row.content_type == "text/plain"


def test_a_large_file_is_spilled_to_disk_and_sent_to_s3_in_parts(
    client, model, owner_auth, s3, monkeypatch
):
    data = random.Random(4).randbytes(9 * 1024 * 1024)  # over S3's 8 MiB multipart threshold
    received = []
    read_upload = contributions.content_from_upload

    def spy(upload):
        received.append(type(upload))
        return read_upload(upload)

    monkeypatch.setattr(contributions, "content_from_upload", spy)

    response = upload(client, owner_auth, data, name="big.bin", file_type="")

    assert response.status_code == 201, response.content
    assert received == [TemporaryUploadedFile]  # on disk, not in memory
    row = Contribution.objects.get()
    assert row.content_type == "application/octet-stream"
    assert s3.objects()[row.storage_name] == data
    # A multipart upload's ETag is "<hash>-<parts>".
    etag = s3.client.head_object(Bucket=s3.name, Key=row.storage_name)["ETag"]
    assert etag.strip('"').endswith("-2")


def test_a_client_content_type_that_is_not_a_media_type_is_stored_as_octet_stream(
    client, model, owner_auth, local_storage
):
    response = upload(client, owner_auth, CSV, file_type="text csv; evil")
    assert response.status_code == 201, response.content
    assert Contribution.objects.get().content_type == "application/octet-stream"


# --- limits -------------------------------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(
    client, model, owner_auth, settings, local_storage, monkeypatch
):
    settings.HOKUSAI_CONTRIBUTION_MAX_BYTES = 1000
    read = []
    monkeypatch.setattr(contributions, "content_from_upload", read.append)

    response = upload(client, owner_auth, b"x" * (1000 + 64 * 1024 + 1))

    assert problem(response) == (413, "request_too_large")
    assert f"at most {1000 + 64 * 1024}" in response.json()["detail"]
    assert read == []
    assert not Contribution.objects.exists() and files_in(local_storage) == {}


def test_a_file_over_the_limit_is_refused_and_one_at_the_limit_accepted(
    client, model, owner_auth, settings, local_storage
):
    settings.HOKUSAI_CONTRIBUTION_MAX_BYTES = 1000

    over = upload(client, owner_auth, b"x" * 1001)
    assert problem(over) == (413, "request_too_large")
    assert "1001 bytes" in over.json()["detail"]
    assert not Contribution.objects.exists() and files_in(local_storage) == {}

    at_limit = upload(client, owner_auth, b"x" * 1000)
    assert at_limit.status_code == 201
    assert Contribution.objects.get().size == 1000


def test_rows_over_the_size_limit_are_refused(client, model, owner_auth, settings, local_storage):
    settings.HOKUSAI_CONTRIBUTION_MAX_BYTES = 50
    response = send_rows(client, owner_auth, [{"text": "x" * 60}])
    assert problem(response) == (413, "request_too_large")
    assert not Contribution.objects.exists() and files_in(local_storage) == {}


def test_a_json_body_keeps_the_api_limit_even_under_the_contribution_limit(
    client, model, owner_auth, settings, local_storage
):
    settings.MAX_REQUEST_BODY_BYTES = 200
    response = send_rows(client, owner_auth, [{"n": n} for n in range(40)])
    assert problem(response) == (413, "request_too_large")
    assert "upload a file" in response.json()["detail"]
    assert not Contribution.objects.exists()


# --- duplicates and retries ---------------------------------------------------------------------


def test_the_same_bytes_again_are_a_conflict_naming_the_first_contribution(
    client, model, owner, owner_auth, outsider_auth, s3
):
    first = upload(client, owner_auth, CSV).json()

    again = upload(client, owner_auth, CSV, name="renamed.csv")
    by_someone_else = upload(client, outsider_auth, CSV)

    for response in (again, by_someone_else):
        assert problem(response) == (409, "duplicate_contribution")
        assert response.json()["contribution_id"] == first["id"]
    assert list(Contribution.objects.values_list("pk", flat=True)) == [first["id"]]
    assert len(s3.objects()) == 1
    # The same bytes for another model are a contribution of their own.
    make_model("fraud", owner)
    assert upload(client, owner_auth, CSV, model_id="fraud").status_code == 201
    assert len(s3.objects()) == 2


def test_a_retry_with_the_same_idempotency_key_returns_the_first_answer(
    client, model, owner_auth, s3
):
    first = upload(client, owner_auth, CSV, HTTP_IDEMPOTENCY_KEY="upload-1")
    retry = upload(client, owner_auth, CSV, HTTP_IDEMPOTENCY_KEY="upload-1")

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert Contribution.objects.count() == 1 and len(s3.objects()) == 1
    assert AuditLog.objects.filter(action="contribution.received").count() == 1

    other_bytes = upload(client, owner_auth, b"other\n", HTTP_IDEMPOTENCY_KEY="upload-1")
    assert problem(other_bytes) == (422, "idempotency_key_reused")
    new_key = upload(client, owner_auth, CSV, HTTP_IDEMPOTENCY_KEY="upload-2")
    assert problem(new_key) == (409, "duplicate_contribution")


def test_a_twin_that_commits_first_wins_and_the_losers_object_is_deleted(
    client, model, outsider, owner_auth, s3, monkeypatch
):
    storage = storages["contributions"]
    save = storage.save
    twins = []

    def save_while_a_twin_commits(name, content, **options):
        stored = save(name, content, **options)
        twins.append(
            Contribution.objects.create(
                model=model,
                contributor="outsider",
                contributor_user=outsider,
                storage_name="contributions/churn/twin.csv",
                size=len(CSV),
                sha256=hashlib.sha256(CSV).hexdigest(),
                content_type="text/csv",
            )
        )
        return stored

    monkeypatch.setattr(storage, "save", save_while_a_twin_commits)

    response = upload(client, owner_auth, CSV)

    assert problem(response) == (409, "duplicate_contribution")
    assert response.json()["contribution_id"] == twins[0].pk
    assert s3.objects() == {}
    assert not AuditLog.objects.filter(action="contribution.received").exists()


# --- who sees what ------------------------------------------------------------------------------


def test_listing_shows_only_the_callers_own_contributions(
    client, model, owner, owner_auth, outsider_auth, staff, issue_key, local_storage
):
    older = upload(client, owner_auth, b"a\n").json()
    newer = send_rows(client, owner_auth, [{"b": 1}]).json()
    theirs = upload(client, outsider_auth, b"c\n").json()
    make_model("fraud", owner)
    elsewhere = upload(client, owner_auth, b"d\n", model_id="fraud").json()

    mine = client.get(url("churn"), **owner_auth).json()
    assert [c["id"] for c in mine["results"]] == [newer["id"], older["id"]]
    assert mine["results"][1] == older
    their_list = client.get(url("churn"), **outsider_auth).json()
    assert [c["id"] for c in their_list["results"]] == [theirs["id"]]
    assert [c["id"] for c in client.get(url("fraud"), **owner_auth).json()["results"]] == [
        elsewhere["id"]
    ]
    staff_auth = bearer(issue_key(staff, ["contributions:write"])[1])
    everyone = client.get(url("churn"), **staff_auth).json()
    assert {c["id"] for c in everyone["results"]} == {older["id"], newer["id"], theirs["id"]}

    first_page = client.get(url("churn"), {"page_size": 1}, **owner_auth).json()
    assert first_page["count"] == 2 and first_page["next"] is not None
    assert [c["id"] for c in first_page["results"]] == [newer["id"]]


def test_an_ethereum_signed_contributor_contributes_and_lists_their_own(client, model, s3):
    wallet = Account.create()

    response = send_rows(client, signed_headers(client, wallet), [{"label": "spam"}])

    assert response.status_code == 201, response.content
    assert response.json()["contributor"] == wallet.address
    row = Contribution.objects.get()
    assert row.contributor_user is None
    assert row.contributor_identity.address == wallet.address
    assert s3.objects() == {row.storage_name: b'{"label":"spam"}\n'}
    entry = AuditLog.objects.get(action="contribution.received")
    assert (entry.actor_kind, entry.actor_label) == ("eth", wallet.address)
    listed = client.get(url("churn"), **signed_headers(client, wallet)).json()
    assert [c["id"] for c in listed["results"]] == [row.pk]
    someone_else = client.get(url("churn"), **signed_headers(client, Account.create())).json()
    assert someone_else["results"] == []


# --- failures -----------------------------------------------------------------------------------


def test_a_missing_bucket_is_a_502_that_leaves_no_row_and_a_retry_can_finish(
    client, model, owner_auth, s3
):
    s3.client.delete_bucket(Bucket=s3.name)

    response = upload(client, owner_auth, CSV, HTTP_IDEMPOTENCY_KEY="upload-1")

    assert problem(response) == (502, "storage_error")
    assert not Contribution.objects.exists()
    assert not AuditLog.objects.filter(action="contribution.received").exists()
    s3.client.create_bucket(Bucket=s3.name)
    retried = upload(client, owner_auth, CSV, HTTP_IDEMPOTENCY_KEY="upload-1")
    assert retried.status_code == 201
    assert s3.objects() == {Contribution.objects.get().storage_name: CSV}


def test_a_stopped_s3_server_is_a_503_and_leaves_no_row(
    client, model, owner_auth, s3, settings, local_storage
):
    # Nothing listens on a fresh free port: as if the S3 server had stopped.
    use_s3(
        settings,
        AWS_STORAGE_BUCKET_NAME=s3.name,
        AWS_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
    )

    response = upload(client, owner_auth, CSV)

    assert problem(response) == (503, "storage_unavailable")
    assert "nothing was kept" in response.json()["detail"]
    assert not Contribution.objects.exists() and s3.objects() == {}


def test_a_row_that_cannot_be_written_takes_its_stored_object_with_it(
    model, owner, s3, monkeypatch
):
    def audit_table_gone(**kwargs):
        raise DatabaseError("relation registry_auditlog does not exist")

    monkeypatch.setattr(audit, "contribution_received", audit_table_gone)
    content = contributions.content_from_rows([{"a": 1}])

    with pytest.raises(DatabaseError):
        contributions.contribution_create(
            actor=caller_from_user(owner), model=model, content=content
        )

    assert s3.objects() == {}
    assert not Contribution.objects.exists()


def test_an_unknown_model_is_404_and_nothing_is_stored(client, owner_auth, local_storage):
    response = upload(client, owner_auth, CSV, model_id="nope")
    assert problem(response) == (404, "not_found")
    assert files_in(local_storage) == {}
    assert problem(client.get(url("nope"), **owner_auth)) == (404, "not_found")


def test_a_key_without_the_contributions_scope_is_refused(
    client, model, owner, issue_key, local_storage
):
    reader = bearer(issue_key(owner, ["models:read", "models:write"])[1])

    assert problem(upload(client, reader, CSV)) == (403, "insufficient_scope")
    assert problem(client.get(url("churn"), **reader)) == (403, "insufficient_scope")
    assert problem(upload(client, {}, CSV)) == (401, "authentication_required")
    assert not Contribution.objects.exists() and files_in(local_storage) == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "non_field_errors"),
        ({"rows": []}, "rows"),
        ({"rows": [1, 2]}, "rows.0"),
        ({"rows": {"age": 31}}, "rows"),
        ({"rows": [{"age": 31}], "file": "data.csv"}, "file"),
        ({"rows": [{"n": 1}, {"n": 2}, {"n": 3}]}, "rows"),
    ],
    ids=["nothing", "no-rows", "rows-not-objects", "rows-not-a-list", "both", "too-many-rows"],
)
def test_bad_json_input_is_a_400_naming_the_field(
    client, model, owner_auth, settings, local_storage, body, field
):
    settings.HOKUSAI_CONTRIBUTION_MAX_ROWS = 2
    response = client.post(url("churn"), body, content_type="application/json", **owner_auth)
    assert problem(response) == (400, "validation_error")
    assert field in response.json()["errors"]
    assert not Contribution.objects.exists() and files_in(local_storage) == {}


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"file": SimpleUploadedFile("empty.csv", b"")}, "file"),
        ({"note": "no file here"}, "non_field_errors"),
        ({"file": SimpleUploadedFile("a.csv", CSV), "rows": '[{"a": 1}]'}, "rows.0"),
    ],
    ids=["empty-file", "no-file", "file-and-rows"],
)
def test_bad_multipart_input_is_a_400_naming_the_field(
    client, model, owner_auth, local_storage, form, field
):
    response = client.post(url("churn"), form, **owner_auth)
    assert problem(response) == (400, "validation_error")
    assert field in response.json()["errors"]
    assert not Contribution.objects.exists() and files_in(local_storage) == {}


def test_malformed_json_is_a_400(client, model, owner_auth):
    response = client.post(
        url("churn"), b'{"rows": [', content_type="application/json", **owner_auth
    )
    assert problem(response) == (400, "malformed_body")
    assert not Contribution.objects.exists()


# --- admin and settings -------------------------------------------------------------------------


def test_the_admin_lists_contributions_and_changes_none(
    client, model, owner_auth, staff, local_storage
):
    contributed = upload(client, owner_auth, CSV).json()
    client.force_login(staff)

    page = client.get(ADMIN_URL).content.decode()
    assert contributed["sha256"] in page
    assert 'class="field-contributor">owner<' in page
    assert "CHURN (churn model)" in page
    assert (
        contributed["sha256"]
        in client.get(ADMIN_URL, {"q": contributed["sha256"]}).content.decode()
    )
    assert contributed["sha256"] not in client.get(ADMIN_URL, {"q": "0" * 64}).content.decode()
    filtered = client.get(ADMIN_URL, {"status__exact": "received"}).content.decode()
    assert contributed["sha256"] in filtered

    detail = client.get(f"{ADMIN_URL}{contributed['id']}/change/")
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert client.get(f"{ADMIN_URL}add/").status_code == 403
    assert client.post(f"{ADMIN_URL}{contributed['id']}/change/", {}).status_code == 403
    deleted = client.post(f"{ADMIN_URL}{contributed['id']}/delete/", {"post": "yes"})
    assert deleted.status_code == 403
    assert Contribution.objects.get().sha256 == contributed["sha256"]


def test_a_bucket_selects_s3_storage_and_its_absence_local_files():
    wired = loaded_settings(
        AWS_STORAGE_BUCKET_NAME="hokusai-data",
        AWS_S3_ENDPOINT_URL="http://127.0.0.1:9000",
        AWS_REGION="eu-west-1",
        HOKUSAI_CONTRIBUTION_STORAGE_TIMEOUT_SECONDS="7",
    )
    s3 = wired["STORAGES"]["contributions"]
    assert s3["BACKEND"] == "storages.backends.s3.S3Storage"
    options = s3["OPTIONS"]
    assert (options["bucket_name"], options["endpoint_url"], options["region_name"]) == (
        "hokusai-data",
        "http://127.0.0.1:9000",
        "eu-west-1",
    )
    assert options["client_config"].connect_timeout == 7
    assert options["client_config"].s3 == {"addressing_style": "path"}

    local = loaded_settings()
    assert local["STORAGES"]["contributions"] == {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": local["MEDIA_ROOT"]},
    }
    assert local["STORAGES"]["staticfiles"] == wired["STORAGES"]["staticfiles"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HOKUSAI_CONTRIBUTION_MAX_BYTES", "lots"),
        ("HOKUSAI_CONTRIBUTION_MAX_BYTES", "0"),
        ("HOKUSAI_CONTRIBUTION_MAX_ROWS", "-1"),
        ("HOKUSAI_CONTRIBUTION_STORAGE_TIMEOUT_SECONDS", "soon"),
        ("AWS_STORAGE_BUCKET_NAME", "Not_A_Bucket"),
        ("AWS_S3_ENDPOINT_URL", "ftp://127.0.0.1:9000"),
    ],
)
def test_a_malformed_contribution_variable_stops_start_up_naming_it(variable, value):
    with pytest.raises(ImproperlyConfigured, match=variable):
        loaded_settings(**{variable: value})
