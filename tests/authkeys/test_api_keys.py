import base64
import logging
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from authkeys import keys, services
from authkeys.models import ApiKey, ApiKeySecret
from authkeys.principals import SYSTEM
from registry.models import AuditLog

pytestmark = pytest.mark.django_db

KEYS_URL = "/api/v1/keys"


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def code_of(response) -> str:
    assert response["Content-Type"] == "application/problem+json"
    return response.json()["code"]


# --- the key format ---------------------------------------------------------------------------


def test_generated_keys_have_the_documented_shape_and_pass_their_checksum():
    parsed = keys.generate("test")
    assert parsed.key.startswith("hk_test_")
    assert len(parsed.key) == keys.KEY_LENGTH
    assert parsed.prefix == parsed.key[: len("hk_test_") + keys.LOOKUP_LENGTH]
    assert keys.parse(parsed.key) == parsed


@pytest.mark.parametrize("position", [8, 20, -1])
def test_a_single_typo_fails_the_checksum(position):
    key = keys.generate().key
    changed = "A" if key[position] != "A" else "B"
    typo = key[:position] + changed + key[position + 1 :] if position != -1 else key[:-1] + changed
    with pytest.raises(keys.MalformedKey):
        keys.parse(typo)


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        lambda key: {"HTTP_AUTHORIZATION": f"Bearer {key}"},
        lambda key: {"HTTP_AUTHORIZATION": f"ApiKey {key}"},
        lambda key: {"HTTP_X_API_KEY": key},
        lambda key: {
            "HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"mlflow:{key}".encode()).decode()
        },
    ],
    ids=["bearer", "apikey", "x-api-key", "basic"],
)
def test_a_key_is_accepted_in_every_documented_header(client, owner, issue_key, headers):
    _, key = issue_key(owner, ["keys:manage"])
    response = client.get(KEYS_URL, **headers(key))
    assert response.status_code == 200
    assert response.json()["count"] == 1


def test_no_credentials_is_401_with_a_challenge(client):
    response = client.get(KEYS_URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="hokusai"'
    assert code_of(response) == "authentication_required"


def test_a_malformed_key_is_refused_without_a_database_query(
    client, owner, issue_key, django_assert_num_queries
):
    _, key = issue_key(owner, ["keys:manage"])
    with django_assert_num_queries(0):
        response = client.get(KEYS_URL, **bearer(key[:-1] + ("x" if key[-1] != "x" else "y")))
    assert response.status_code == 401
    assert code_of(response) == "api_key_malformed"


def test_a_well_formed_key_we_never_issued_is_unknown(client, owner):
    response = client.get(KEYS_URL, **bearer(keys.generate().key))
    assert response.status_code == 401
    assert code_of(response) == "api_key_unknown"


def test_a_cached_key_needs_no_database_query(client, owner, issue_key, django_assert_num_queries):
    _, key = issue_key(owner, ["models:read"])
    client.get("/api/v1/keys", **bearer(key))  # fills the cache (403: no keys:manage)
    with django_assert_num_queries(0):
        response = client.get(KEYS_URL, **bearer(key))
    assert code_of(response) == "insufficient_scope"


# Cache refreshes run on commit, so these tests commit.
@pytest.mark.django_db(transaction=True)
def test_revoked_key_is_rejected_on_next_request_even_when_cached(client, owner, issue_key):
    api_key, key = issue_key(owner, ["keys:manage"])
    assert client.get(KEYS_URL, **bearer(key)).status_code == 200  # now cached

    services.api_key_revoke(actor=SYSTEM, api_key=api_key)

    response = client.get(KEYS_URL, **bearer(key))
    assert response.status_code == 401
    assert code_of(response) == "api_key_revoked"
    assert response.json()["detail"] == "API key has been revoked"


def test_key_expiring_while_cached_is_refused(client, owner, issue_key):
    _, key = issue_key(owner, ["keys:manage"], expires_at=timezone.now() + timedelta(seconds=1))
    assert client.get(KEYS_URL, **bearer(key)).status_code == 200
    time.sleep(1.1)
    response = client.get(KEYS_URL, **bearer(key))
    assert response.status_code == 401
    assert code_of(response) == "api_key_expired"


# Cache refreshes run on commit, so these tests commit.
@pytest.mark.django_db(transaction=True)
def test_deactivated_owner_key_is_refused_on_next_request(client, owner, issue_key):
    _, key = issue_key(owner, ["keys:manage"])
    assert client.get(KEYS_URL, **bearer(key)).status_code == 200
    owner.is_active = False
    owner.save()
    assert code_of(client.get(KEYS_URL, **bearer(key))) == "api_key_owner_inactive"


@pytest.mark.parametrize(
    "query",
    [
        "api_key={key}",
        "limit=5&token={key}",
        # Percent-encoded, name and value: refused as Django decodes them.
        "%74oken={encoded}",
        "key={encoded}&key=other",
    ],
)
def test_keys_in_the_query_string_are_refused(client, owner, issue_key, query):
    _, key = issue_key(owner, ["keys:manage"])
    encoded = "".join(f"%{ord(character):02X}" for character in key[:3]) + key[3:]
    response = client.get(f"{KEYS_URL}?{query.format(key=key, encoded=encoded)}", **bearer(key))
    assert response.status_code == 401
    assert code_of(response) == "api_key_in_query"


def test_a_query_string_without_a_key_is_not_refused(client, owner, issue_key):
    _, key = issue_key(owner, ["keys:manage"])
    response = client.get(f"{KEYS_URL}?token=hk_live_short&limit=5", **bearer(key))
    assert response.status_code == 200


def test_missing_scope_is_403_not_401(client, owner, issue_key):
    _, key = issue_key(owner, ["models:read"])
    response = client.get(KEYS_URL, **bearer(key))
    assert response.status_code == 403
    assert code_of(response) == "insufficient_scope"


# --- the key API ------------------------------------------------------------------------------


def test_created_key_is_shown_once_and_stored_only_as_prefix_and_hash(client, staff):
    client.force_login(staff)
    response = client.post(
        KEYS_URL,
        {"name": "ci", "scopes": ["models:read", "predict"], "rate_limit_per_minute": 120},
        content_type="application/json",
    )
    body = response.json()
    assert response.status_code == 201
    key = body["key"]
    assert keys.parse(key).prefix == body["prefix"]
    assert body["scopes"] == ["models:read", "predict"]
    assert body["rate_limit_per_minute"] == 120
    assert body["status"] == "active"
    secret = ApiKeySecret.objects.get(prefix=body["prefix"])
    assert secret.key_hash == services.key_digest(key)
    assert key not in secret.key_hash
    # Never again: detail and list show no secret.
    detail = client.get(f"{KEYS_URL}/{body['id']}").json()
    assert "key" not in detail and "key_hash" not in detail
    assert key not in client.get(KEYS_URL).content.decode()


def test_a_key_can_create_keys_for_its_owner_with_at_most_its_own_scopes(client, owner, issue_key):
    _, key = issue_key(owner, ["keys:manage", "models:read"])
    allowed = client.post(
        KEYS_URL,
        {"name": "reader", "scopes": ["models:read"]},
        content_type="application/json",
        **bearer(key),
    )
    assert allowed.status_code == 201
    assert ApiKey.objects.get(pk=allowed.json()["id"]).owner_user == owner

    escalation = client.post(
        KEYS_URL,
        {"name": "x", "scopes": ["models:read", "predict"]},
        content_type="application/json",
        **bearer(key),
    )
    assert escalation.status_code == 403
    assert code_of(escalation) == "scope_not_held"
    assert escalation.json()["scopes"] == ["predict"]
    assert ApiKey.objects.count() == 2


def test_unknown_scope_is_a_validation_error(client, staff):
    client.force_login(staff)
    response = client.post(
        KEYS_URL, {"name": "x", "scopes": ["root"]}, content_type="application/json"
    )
    assert response.status_code == 400
    assert "scopes.0" in response.json()["errors"]


def test_other_owners_keys_are_404(client, owner, outsider, issue_key):
    their_key, _ = issue_key(outsider, ["keys:manage"])
    _, key = issue_key(owner, ["keys:manage"])
    for method, url in [
        ("get", f"{KEYS_URL}/{their_key.pk}"),
        ("delete", f"{KEYS_URL}/{their_key.pk}"),
        ("post", f"{KEYS_URL}/{their_key.pk}/rotate"),
    ]:
        response = getattr(client, method)(url, **bearer(key))
        assert response.status_code == 404, (method, url)
    their_key.refresh_from_db()
    assert their_key.revoked_at is None
    listed = client.get(KEYS_URL, **bearer(key)).json()["results"]
    assert [item["name"] for item in listed] == ["test key"]
    assert their_key.pk not in {item["id"] for item in listed}


# Cache refreshes run on commit, so these tests commit.
@pytest.mark.django_db(transaction=True)
def test_revoke_through_the_api_stops_the_key(client, owner, issue_key):
    _, manager_key = issue_key(owner, ["keys:manage"])
    victim, victim_key = issue_key(owner, ["keys:manage"])
    assert client.get(KEYS_URL, **bearer(victim_key)).status_code == 200

    response = client.delete(f"{KEYS_URL}/{victim.pk}", **bearer(manager_key))

    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    assert code_of(client.get(KEYS_URL, **bearer(victim_key))) == "api_key_revoked"


# Cache refreshes run on commit, so these tests commit.
@pytest.mark.django_db(transaction=True)
def test_rotation_keeps_the_old_secret_for_the_grace_period(client, owner, issue_key, settings):
    settings.HOKUSAI_KEY_ROTATION_GRACE = 1
    api_key, old_key = issue_key(owner, ["keys:manage"])
    assert client.get(KEYS_URL, **bearer(old_key)).status_code == 200

    response = client.post(f"{KEYS_URL}/{api_key.pk}/rotate", **bearer(old_key))
    new_key = response.json()["key"]

    assert response.status_code == 200
    assert response.json()["id"] == api_key.pk
    assert new_key != old_key
    assert client.get(KEYS_URL, **bearer(new_key)).status_code == 200
    assert client.get(KEYS_URL, **bearer(old_key)).status_code == 200  # within the grace
    time.sleep(1.1)
    assert code_of(client.get(KEYS_URL, **bearer(old_key))) == "api_key_expired"
    assert client.get(KEYS_URL, **bearer(new_key)).status_code == 200


# Cache refreshes run on commit, so these tests commit.
@pytest.mark.django_db(transaction=True)
def test_rotation_without_grace_stops_the_old_secret_at_once(client, owner, issue_key):
    api_key, old_key = issue_key(owner, ["keys:manage"])
    assert client.get(KEYS_URL, **bearer(old_key)).status_code == 200
    _, new_key = services.api_key_rotate(actor=SYSTEM, api_key=api_key, grace=timedelta(0))
    assert code_of(client.get(KEYS_URL, **bearer(old_key))) == "api_key_expired"
    assert client.get(KEYS_URL, **bearer(new_key)).status_code == 200


def test_a_revoked_key_cannot_be_rotated(owner, issue_key):
    from hokusai_site.errors import ApplicationError

    api_key, _ = issue_key(owner)
    services.api_key_revoke(actor=SYSTEM, api_key=api_key)
    with pytest.raises(ApplicationError) as refused:
        services.api_key_rotate(actor=SYSTEM, api_key=api_key)
    assert refused.value.code == "api_key_not_active"


def test_create_rotate_and_revoke_write_audit_entries(client, owner, issue_key):
    _, key = issue_key(owner, ["keys:manage"])
    created = client.post(
        KEYS_URL,
        {"name": "x", "scopes": ["keys:manage"]},
        content_type="application/json",
        HTTP_X_REQUEST_ID="audit-req-1",
        **bearer(key),
    ).json()
    client.post(f"{KEYS_URL}/{created['id']}/rotate", **bearer(key))
    client.delete(f"{KEYS_URL}/{created['id']}", **bearer(key))

    entries = AuditLog.objects.filter(target_type="api_key", target_id=str(created["id"]))
    assert [e.action for e in entries.order_by("id")] == [
        "api_key.created",
        "api_key.rotated",
        "api_key.revoked",
    ]
    first = entries.order_by("id").first()
    assert first.actor_kind == "api_key"
    assert first.actor_label == keys.parse(key).prefix
    assert first.request_id == "audit-req-1"
    assert first.ip == "127.0.0.1"
    assert first.details["scopes"] == ["keys:manage"]
    assert created["key"] not in str(list(entries.values()))


def test_no_key_material_reaches_the_logs(client, owner, issue_key, caplog):
    _, key = issue_key(owner, ["keys:manage"])
    with caplog.at_level(logging.DEBUG):
        client.get(KEYS_URL, **bearer(key))
        created = client.post(
            KEYS_URL,
            {"name": "x", "scopes": ["keys:manage"]},
            content_type="application/json",
            **bearer(key),
        ).json()["key"]
        client.get(KEYS_URL, **bearer(key[:-2] + "zz"))
    logged = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    secret_part = key[len("hk_live_") + keys.LOOKUP_LENGTH :]
    assert secret_part not in logged
    assert created[len("hk_live_") + keys.LOOKUP_LENGTH :] not in logged


# --- the management command -------------------------------------------------------------------


def test_create_api_key_command_prints_a_working_key_once(client, owner, capsys):
    call_command(
        "create_api_key",
        "--name",
        "cli",
        "--scopes",
        "keys:manage,predict",
        "--user",
        "owner",
        "--rate-limit",
        "30",
        "--expires-in",
        "30d",
    )
    out = capsys.readouterr()
    key = out.out.strip()
    assert keys.parse(key)
    assert key not in out.err
    api_key = ApiKey.objects.get(name="cli")
    assert api_key.rate_limit_per_minute == 30
    assert timedelta(days=29) < api_key.expires_at - timezone.now() <= timedelta(days=30)
    assert client.get(KEYS_URL, **bearer(key)).status_code == 200
    assert AuditLog.objects.filter(action="api_key.created", actor_kind="system").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--user", "nobody"], "no user named 'nobody'"),
        (["--user", "owner", "--expires-in", "soon"], "--expires-in"),
        (["--user", "owner", "--scopes", "root"], "Unknown scopes: root"),
    ],
)
def test_create_api_key_command_explains_bad_input(owner, arguments, message):
    from django.core.management.base import CommandError

    base = ["--name", "cli", "--scopes", "predict"]
    with pytest.raises(CommandError, match=message):
        call_command("create_api_key", *base, *arguments)
    assert not ApiKey.objects.filter(name="cli").exists()


# --- updates ----------------------------------------------------------------------------------


def patch(client, key: str, key_id: int, body: dict):
    return client.patch(
        f"{KEYS_URL}/{key_id}", body, content_type="application/json", **bearer(key)
    )


# The change reaches the cached facts on commit, so this test commits.
@pytest.mark.django_db(transaction=True)
def test_narrowed_scopes_and_a_new_limit_apply_on_the_next_request(client, owner, issue_key):
    api_key, key = issue_key(owner, ["keys:manage", "models:read"])
    assert client.get(KEYS_URL, **bearer(key)).status_code == 200  # the facts are cached

    narrowed = {"scopes": ["models:read"], "rate_limit_per_minute": 7}
    response = patch(client, key, api_key.pk, narrowed)

    assert response.status_code == 200
    assert response.json()["scopes"] == ["models:read"]
    assert response.json()["rate_limit_per_minute"] == 7
    following = client.get(KEYS_URL, **bearer(key))
    assert code_of(following) == "insufficient_scope"
    assert following["X-RateLimit-Limit"] == "7"
    entry = AuditLog.objects.get(action="api_key.updated")
    assert entry.details["changes"] == {
        "scopes": {"old": ["keys:manage", "models:read"], "new": ["models:read"]},
        "rate_limit_per_minute": {"old": 600, "new": 7},
    }


def test_an_update_cannot_grant_scopes_the_caller_lacks(client, owner, issue_key):
    api_key, key = issue_key(owner, ["keys:manage"])
    response = patch(client, key, api_key.pk, {"scopes": ["keys:manage", "models:write"]})
    assert response.status_code == 403
    assert code_of(response) == "scope_not_held"
    api_key.refresh_from_db()
    assert api_key.scopes == ["keys:manage"]
    assert not AuditLog.objects.filter(action="api_key.updated").exists()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"expires_at": "2001-01-01T00:00:00Z"}, 400, "expiry_in_past"),
        ({"scopes": ["no:such"]}, 400, "validation_error"),
        ({"scopes": []}, 400, "validation_error"),
        ({"rate_limit_per_minute": 0}, 400, "validation_error"),
        ({"name": "x" * 101}, 400, "validation_error"),
    ],
)
def test_a_bad_update_changes_nothing(client, owner, issue_key, body, status, code):
    api_key, key = issue_key(owner, ["keys:manage"])
    response = patch(client, key, api_key.pk, body)
    assert (response.status_code, code_of(response)) == (status, code)
    unchanged = ApiKey.objects.get(pk=api_key.pk)
    assert (unchanged.name, unchanged.scopes, unchanged.expires_at) == (
        "test key",
        ["keys:manage"],
        None,
    )


def test_a_revoked_key_cannot_be_changed_and_others_keys_are_404(
    client, owner, outsider, issue_key
):
    _, key = issue_key(owner, ["keys:manage"])
    revoked, _ = issue_key(owner, ["models:read"])
    services.api_key_revoke(actor=SYSTEM, api_key=revoked)
    theirs, _ = issue_key(outsider, ["models:read"])
    response = patch(client, key, revoked.pk, {"name": "again"})
    assert (response.status_code, code_of(response)) == (409, "api_key_not_active")
    assert patch(client, key, theirs.pk, {"name": "mine"}).status_code == 404
    assert ApiKey.objects.get(pk=theirs.pk).name == "test key"


def test_renaming_alone_is_audited_without_republishing(client, owner, issue_key):
    api_key, key = issue_key(owner, ["keys:manage"])
    assert patch(client, key, api_key.pk, {"name": "ci"}).json()["name"] == "ci"
    api_key.refresh_from_db()
    assert api_key.changed_at is None  # nothing that matters to authentication changed
    entry = AuditLog.objects.get(action="api_key.updated")
    assert entry.details["changes"] == {"name": {"old": "test key", "new": "ci"}}


def test_a_login_does_not_republish_the_users_keys(client, owner, issue_key):
    api_key, _ = issue_key(owner, ["keys:manage"])
    client.login(username="owner", password="pw-owner-123")  # saves last_login only
    api_key.refresh_from_db()
    assert api_key.changed_at is None
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    api_key.refresh_from_db()
    assert api_key.changed_at is not None
