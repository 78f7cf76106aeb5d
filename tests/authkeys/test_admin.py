import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from authkeys import services
from authkeys.models import ApiKey, ApiKeySecret, EthIdentity
from authkeys.principals import SYSTEM
from registry.models import AuditLog
from tests.conftest import WALLET_ADDRESS as ADDRESS

pytestmark = pytest.mark.django_db

KEYS_URL = "/api/v1/keys"
KEYS_ADMIN = "/admin/authkeys/apikey/"
IDENTITIES_ADMIN = "/admin/authkeys/ethidentity/"
AUDIT_ADMIN = "/admin/registry/auditlog/"
KEY_IN_PAGE = re.compile(r"hk_(?:live|test)_[0-9A-Za-z]{38}")


def api_get(key: str):
    """A request with the key alone: a fresh client, so no staff session vouches for it."""
    return Client().get(KEYS_URL, HTTP_AUTHORIZATION=f"Bearer {key}")


def add_form(**overrides) -> dict:
    data = {
        "name": "ci deploy",
        "owner_user": "",
        "owner_identity": "",
        "environment": "live",
        "scopes": ["keys:manage"],
        "rate_limit_per_minute": "",
        "expires_at_0": "",
        "expires_at_1": "",
    }
    data.update(overrides)
    return data


def run_action(client, action: str, *keys: ApiKey):
    return client.post(
        KEYS_ADMIN, {"action": action, "_selected_action": [str(key.pk) for key in keys]}
    )


def shown_key(response) -> str:
    found = KEY_IN_PAGE.findall(response.content.decode())
    assert len(set(found)) == 1, found
    return found[0]


# --- API keys: lists and forms ----------------------------------------------------------------


def test_key_list_shows_prefix_owner_and_status_in_a_constant_number_of_queries(
    operator_client, owner, identity, issue_key, django_assert_max_num_queries
):
    first, _ = issue_key(owner, ["models:read"])
    with CaptureQueriesContext(connection) as one_key:
        operator_client.get(KEYS_ADMIN)
    for number in range(19):
        if number % 2:
            issue_key(owner, ["predict"])
        else:
            services.api_key_create(
                actor=SYSTEM, owner_identity_id=identity.pk, scopes=["predict"], name=f"w{number}"
            )
    services.api_key_revoke(actor=SYSTEM, api_key=first)

    with django_assert_max_num_queries(len(one_key)):
        response = operator_client.get(KEYS_ADMIN)

    page = response.content.decode()
    assert response.status_code == 200
    assert first.current_prefix in page
    assert 'class="field-owner">owner<' in page
    assert 'class="field-owner">wallet<' in page
    assert 'class="field-status_display">revoked<' in page
    assert 'class="field-status_display">active<' in page
    assert len(one_key) <= 10


def test_key_list_searches_by_prefix(operator_client, owner, issue_key):
    wanted, _ = issue_key(owner)
    other, _ = issue_key(owner)
    response = operator_client.get(KEYS_ADMIN, {"q": wanted.current_prefix})
    page = response.content.decode()
    assert wanted.current_prefix in page
    assert other.current_prefix not in page


def test_key_change_form_shows_facts_but_never_the_hash(operator_client, owner, issue_key):
    api_key, key = issue_key(owner, ["models:read", "predict"])
    secret = ApiKeySecret.objects.get(api_key=api_key)
    response = operator_client.get(f"{KEYS_ADMIN}{api_key.pk}/change/")
    page = response.content.decode()
    assert response.status_code == 200
    assert api_key.current_prefix in page
    assert "secrets (public prefixes only)" in page.lower()  # the inline is shown
    checked = re.findall(r'name="scopes" value="([^"]+)"[^>]*checked', page)
    assert checked == ["models:read", "predict"]
    assert secret.key_hash not in page
    assert "hash" not in page.lower()
    assert key not in page


def secrets_inline_management_form(api_key) -> dict:
    """What the change form posts for its read-only secrets inline."""
    count = str(api_key.secrets.count())
    return {
        "secrets-TOTAL_FORMS": count,
        "secrets-INITIAL_FORMS": count,
        "secrets-MIN_NUM_FORMS": "0",
        "secrets-MAX_NUM_FORMS": "1000",
    }


def test_an_edit_goes_through_the_service_and_is_audited(operator_client, owner, issue_key):
    api_key, _ = issue_key(owner, ["models:read"])
    response = operator_client.post(
        f"{KEYS_ADMIN}{api_key.pk}/change/",
        {
            "name": "renamed",
            "scopes": ["models:read", "predict"],
            "rate_limit_per_minute": "9",
            **secrets_inline_management_form(api_key),
        },
    )
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert (api_key.name, api_key.scopes, api_key.rate_limit_per_minute) == (
        "renamed",
        ["models:read", "predict"],
        9,
    )
    assert api_key.changed_at is not None
    entry = AuditLog.objects.get(action="api_key.updated")
    assert entry.details["changes"]["name"] == {"old": "test key", "new": "renamed"}
    assert entry.details["changes"]["rate_limit_per_minute"] == {"old": 600, "new": 9}
    assert entry.actor_label == "operator"


def test_a_revoked_key_is_read_only_in_the_admin(operator_client, owner, issue_key):
    api_key, _ = issue_key(owner, ["models:read"])
    services.api_key_revoke(actor=SYSTEM, api_key=api_key)
    operator_client.post(
        f"{KEYS_ADMIN}{api_key.pk}/change/",
        {
            "name": "renamed",
            "scopes": ["admin"],
            "rate_limit_per_minute": "1",
            **secrets_inline_management_form(api_key),
        },
    )
    api_key.refresh_from_db()
    assert (api_key.name, api_key.scopes) == ("test key", ["models:read"])
    assert not AuditLog.objects.filter(action="api_key.updated").exists()


# --- API keys: create, revoke, rotate ---------------------------------------------------------


def test_adding_a_key_issues_it_through_the_service_and_shows_it_once(
    operator_client, owner, staff
):
    response = operator_client.post(
        f"{KEYS_ADMIN}add/",
        add_form(owner_user=str(owner.pk), scopes=["keys:manage", "models:read"]),
    )

    assert response.status_code == 200
    assert "not be shown again" in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    key = shown_key(response)
    api_key = ApiKey.objects.get(name="ci deploy")
    assert api_key.owner_user == owner
    assert api_key.scopes == ["keys:manage", "models:read"]
    assert key.startswith(api_key.current_prefix)
    # The key works, as its owner.
    listed = api_get(key)
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()["results"]] == [api_key.pk]
    # The service wrote the audit entry, naming the operator.
    entry = AuditLog.objects.get(action="api_key.created", target_id=str(api_key.pk))
    assert entry.actor_kind == "user"
    assert entry.actor_label == staff.username
    assert entry.actor_user == staff
    # Never again: not on later pages, nor anywhere in the database.
    for url in [KEYS_ADMIN, f"{KEYS_ADMIN}{api_key.pk}/change/", AUDIT_ADMIN]:
        assert key not in operator_client.get(url).content.decode(), url
    stored = [
        *ApiKeySecret.objects.values_list("prefix", "key_hash"),
        *ApiKey.objects.values_list("name", "scopes"),
        *AuditLog.objects.values_list("details", flat=True),
        *LogEntry.objects.values_list("object_repr", "change_message"),
        *(session.get_decoded() for session in Session.objects.all()),
    ]
    assert key not in str(stored)


def test_a_key_for_an_ethereum_identity_can_be_added(operator_client, identity):
    response = operator_client.post(
        f"{KEYS_ADMIN}add/",
        add_form(owner_identity=str(identity.pk), environment="test", rate_limit_per_minute="30"),
    )
    key = shown_key(response)
    api_key = ApiKey.objects.get(owner_identity=identity)
    assert key.startswith("hk_test_")
    assert api_key.rate_limit_per_minute == 30
    assert api_get(key).status_code == 200


@pytest.mark.parametrize(
    ("owners", "field"),
    [({}, "owner_user"), ({"owner_user": "owner", "owner_identity": "identity"}, "owner_identity")],
    ids=["no-owner", "two-owners"],
)
def test_a_key_has_exactly_one_owner(operator_client, owner, identity, owners, field):
    ids = {"owner": str(owner.pk), "identity": str(identity.pk)}
    response = operator_client.post(
        f"{KEYS_ADMIN}add/", add_form(**{name: ids[who] for name, who in owners.items()})
    )
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not ApiKey.objects.exists()


def test_an_expiry_in_the_past_is_refused(operator_client, owner):
    past = timezone.localtime() - timedelta(days=1)
    response = operator_client.post(
        f"{KEYS_ADMIN}add/",
        add_form(
            owner_user=str(owner.pk),
            expires_at_0=past.strftime("%Y-%m-%d"),
            expires_at_1=past.strftime("%H:%M:%S"),
        ),
    )
    assert response.status_code == 200
    assert "expires_at" in response.context["adminform"].form.errors
    assert not ApiKey.objects.exists()


# Cache refreshes run on commit, so these tests commit.
@pytest.mark.django_db(transaction=True)
def test_revoke_action_stops_the_keys_on_the_next_request(operator_client, owner, issue_key, staff):
    first, first_key = issue_key(owner, ["keys:manage"])
    second, second_key = issue_key(owner, ["keys:manage"])
    _, spared_key = issue_key(owner, ["keys:manage"])
    for key in (first_key, second_key, spared_key):
        assert api_get(key).status_code == 200  # now cached

    response = run_action(operator_client, "revoke_selected", first, second)

    assert response.status_code == 302
    for key in (first_key, second_key):
        refused = api_get(key)
        assert refused.status_code == 401
        assert refused.json()["code"] == "api_key_revoked"
    assert api_get(spared_key).status_code == 200
    entries = AuditLog.objects.filter(action="api_key.revoked")
    assert {e.target_id for e in entries} == {str(first.pk), str(second.pk)}
    assert {e.actor_label for e in entries} == {staff.username}


# Cache refreshes run on commit, so these tests commit.
@pytest.mark.django_db(transaction=True)
def test_rotate_action_shows_a_new_working_key(operator_client, owner, issue_key):
    api_key, old_key = issue_key(owner, ["keys:manage"])
    assert api_get(old_key).status_code == 200

    response = run_action(operator_client, "rotate_selected", api_key)

    assert response.status_code == 200
    assert "not be shown again" in response.content.decode()
    new_key = shown_key(response)
    assert new_key != old_key
    assert api_get(new_key).status_code == 200
    assert api_get(old_key).status_code == 200  # within the grace period
    assert AuditLog.objects.filter(action="api_key.rotated", actor_kind="user").count() == 1
    assert new_key not in operator_client.get(f"{KEYS_ADMIN}{api_key.pk}/change/").content.decode()


def test_rotate_action_takes_exactly_one_key(operator_client, owner, issue_key):
    first, _ = issue_key(owner)
    second, _ = issue_key(owner)
    response = run_action(operator_client, "rotate_selected", first, second)
    assert response.status_code == 302
    assert ApiKeySecret.objects.count() == 2
    followed = operator_client.get(response["Location"])
    assert "select exactly one" in followed.content.decode()


def test_a_revoked_key_cannot_be_rotated_from_the_admin(operator_client, owner, issue_key):
    api_key, _ = issue_key(owner)
    services.api_key_revoke(actor=SYSTEM, api_key=api_key)
    response = run_action(operator_client, "rotate_selected", api_key)
    assert response.status_code == 302
    assert ApiKeySecret.objects.count() == 1
    assert "revoked key cannot be rotated" in operator_client.get(KEYS_ADMIN).content.decode()


def test_keys_cannot_be_deleted_from_the_admin(operator_client, owner, issue_key):
    api_key, _ = issue_key(owner)
    changelist = operator_client.get(KEYS_ADMIN).content.decode()
    assert "delete_selected" not in changelist
    assert "revoke_selected" in changelist and "rotate_selected" in changelist
    assert (
        "deletelink"
        not in operator_client.get(f"{KEYS_ADMIN}{api_key.pk}/change/").content.decode()
    )
    assert (
        operator_client.post(f"{KEYS_ADMIN}{api_key.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    response = run_action(operator_client, "delete_selected", api_key)
    assert response.status_code == 302  # an unknown action: "No action selected."
    assert ApiKey.objects.filter(pk=api_key.pk).exists()


# --- Ethereum identities ----------------------------------------------------------------------


def test_identity_list_renders(operator_client, identity):
    response = operator_client.get(IDENTITIES_ADMIN)
    assert response.status_code == 200
    assert ADDRESS in response.content.decode()


def test_editing_an_identity_changes_its_scopes_and_is_audited(operator_client, identity):
    response = operator_client.post(
        f"{IDENTITIES_ADMIN}{identity.pk}/change/",
        {
            "label": "wallet",
            "scopes": ["predict", "models:read"],
            "rate_limit_per_minute": "60",
            "is_active": "on",
        },
    )
    assert response.status_code == 302
    identity.refresh_from_db()
    assert identity.scopes == ["models:read", "predict"]
    assert identity.rate_limit_per_minute == 60
    entry = AuditLog.objects.get(action="eth_identity.changed")
    assert entry.details["scopes"] == ["models:read", "predict"]
    assert entry.actor_label == "operator"


def test_an_identity_added_by_hand_gets_the_checksummed_address(operator_client):
    response = operator_client.post(
        f"{IDENTITIES_ADMIN}add/",
        {"address": ADDRESS.lower(), "label": "", "scopes": ["predict"], "is_active": "on"},
    )
    assert response.status_code == 302
    assert EthIdentity.objects.get().address == ADDRESS


def test_identities_cannot_be_deleted(operator_client, identity):
    response = operator_client.post(f"{IDENTITIES_ADMIN}{identity.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert EthIdentity.objects.filter(pk=identity.pk).exists()


# --- the audit log ----------------------------------------------------------------------------


def test_audit_log_is_listed_and_read_only(operator_client, owner, issue_key):
    issue_key(owner)
    entry = AuditLog.objects.get(action="api_key.created")

    listed = operator_client.get(AUDIT_ADMIN)
    assert listed.status_code == 200
    assert "api_key.created" in listed.content.decode()
    assert f'href="{AUDIT_ADMIN}add/"' not in listed.content.decode()
    assert "delete_selected" not in listed.content.decode()

    detail = operator_client.get(f"{AUDIT_ADMIN}{entry.pk}/change/")
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()

    assert operator_client.get(f"{AUDIT_ADMIN}add/").status_code == 403
    assert operator_client.post(f"{AUDIT_ADMIN}{entry.pk}/change/", {}).status_code == 403
    assert (
        operator_client.post(f"{AUDIT_ADMIN}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert AuditLog.objects.filter(pk=entry.pk, action="api_key.created").exists()


# --- who may use it ---------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["anonymous", "outsider"])
def test_only_staff_reach_these_pages(client, outsider, owner, issue_key, who):
    api_key, _ = issue_key(owner)
    if who == "outsider":
        client.force_login(outsider)
    urls = [
        KEYS_ADMIN,
        f"{KEYS_ADMIN}add/",
        f"{KEYS_ADMIN}{api_key.pk}/change/",
        IDENTITIES_ADMIN,
        AUDIT_ADMIN,
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url
    response = run_action(client, "revoke_selected", api_key)
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is None


def test_usage_admin_lists_daily_counts_read_only(client, staff, owner, issue_key):
    from authkeys.models import ApiKeyUsageDaily

    api_key, _ = issue_key(owner)
    ApiKeyUsageDaily.objects.create(api_key=api_key, day=timezone.now().date(), requests=42)
    client.force_login(staff)
    page = client.get("/admin/authkeys/apikeyusagedaily/")
    assert page.status_code == 200
    assert "42" in page.content.decode()
    assert client.get("/admin/authkeys/apikeyusagedaily/add/").status_code == 403
