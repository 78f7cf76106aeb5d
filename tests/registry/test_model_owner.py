"""Staff give a model that sync found in MLflow (`unclaimed`, no owner) its owner: through
`services.model_assign_owner`, and through the admin action that calls it. No MLflow needed:
the rows are made directly."""

import pytest

from authkeys.principals import SYSTEM, Caller, caller_from_user
from authkeys.scopes import ADMIN, MODELS_READ
from hokusai_site.errors import ApplicationError
from registry import services
from registry.models import AuditLog, Model, ModelVersion

pytestmark = pytest.mark.django_db

MODELS_ADMIN = "/admin/registry/model/"


def found_model(symbol: str, *versions: float | None, **fields) -> Model:
    """A model as sync makes it (f1, higher is better, baseline 0.8), with versions 1, 2, …
    carrying the given current values."""
    model = Model.objects.create(
        model_id=symbol.lower(),
        token_symbol=symbol,
        name=f"{symbol.lower()}-model",
        metric_name="f1",
        metric_direction="higher",
        baseline_value=0.8,
        **{"status": "unclaimed", **fields},
    )
    for number, value in enumerate(versions, start=1):
        ModelVersion.objects.create(
            model=model,
            version=number,
            source=f"models:/m-{number}",
            mlflow_status="READY",
            current_value=value,
            registered_by="sync",
        )
    return model


def owner_facts(model: Model) -> tuple:
    model.refresh_from_db()
    return model.owner_user_id, model.owner_identity_id, model.status


# --- the service --------------------------------------------------------------------------------


def test_staff_assign_a_user_and_the_audit_log_says_so(staff, owner):
    model = found_model("ORPHAN")

    returned = services.model_assign_owner(
        actor=caller_from_user(staff), model=model, owner_user=owner
    )

    assert returned.owner_label == "owner"
    assert owner_facts(model) == (owner.pk, None, "registered")
    entry = AuditLog.objects.get()
    assert (entry.action, entry.target_type, entry.target_id) == (
        "model.owner_assigned",
        "model",
        "orphan",
    )
    assert (entry.actor_kind, entry.actor_label, entry.actor_user_id) == (
        "user",
        "operator",
        staff.pk,
    )
    assert entry.details == {"owner": "owner", "status": "registered"}


def test_the_system_assigns_an_ethereum_identity(identity):
    model = found_model("ORPHAN")

    services.model_assign_owner(actor=SYSTEM, model=model, owner_identity=identity)

    assert owner_facts(model) == (None, identity.pk, "registered")
    assert AuditLog.objects.get().details == {"owner": "wallet", "status": "registered"}


@pytest.mark.parametrize("owners", ["neither", "both"])
def test_exactly_one_owner(staff, owner, identity, owners):
    model = found_model("ORPHAN")
    chosen = {} if owners == "neither" else {"owner_user": owner, "owner_identity": identity}

    with pytest.raises(ApplicationError) as raised:
        services.model_assign_owner(actor=caller_from_user(staff), model=model, **chosen)

    assert (raised.value.status, raised.value.code) == (400, "owner_required")
    assert owner_facts(model) == (None, None, "unclaimed")
    assert not AuditLog.objects.exists()


@pytest.mark.parametrize("who", ["user", "admin_key"])
def test_only_staff_assign(outsider, owner, who):
    model = found_model("ORPHAN")
    # A key holding `admin` is still not staff: owners are assigned by people or the system.
    actor = (
        caller_from_user(outsider)
        if who == "user"
        else Caller(kind="api_key", label="hk_live_abc", scopes=frozenset({ADMIN}), key_id=1)
    )

    with pytest.raises(ApplicationError) as raised:
        services.model_assign_owner(actor=actor, model=model, owner_user=owner)

    assert (raised.value.status, raised.value.code) == (403, "not_staff")
    assert owner_facts(model) == (None, None, "unclaimed")
    assert not AuditLog.objects.exists()


def test_a_model_with_an_owner_keeps_it(staff, owner, outsider):
    model = found_model("ORPHAN", owner_user=owner, status="registered")

    with pytest.raises(ApplicationError) as raised:
        services.model_assign_owner(actor=caller_from_user(staff), model=model, owner_user=outsider)

    assert (raised.value.status, raised.value.code) == (409, "model_not_unclaimed")
    assert owner_facts(model) == (owner.pk, None, "registered")
    assert not AuditLog.objects.exists()


def test_a_stale_copy_does_not_assign_twice(staff, owner, outsider):
    model = found_model("ORPHAN")
    stale = Model.objects.get(pk=model.pk)
    services.model_assign_owner(actor=caller_from_user(staff), model=model, owner_user=owner)

    with pytest.raises(ApplicationError) as raised:
        services.model_assign_owner(actor=caller_from_user(staff), model=stale, owner_user=outsider)

    assert raised.value.code == "model_not_unclaimed"
    assert owner_facts(model) == (owner.pk, None, "registered")
    assert AuditLog.objects.count() == 1


@pytest.mark.parametrize(
    ("values", "status"),
    [
        ((0.7, 0.9), "ready_to_deploy"),  # the newest beats the baseline of 0.8
        ((0.9, 0.7), "registered"),  # only an older one does
        ((0.9, None), "registered"),  # the newest has no value
    ],
)
def test_the_status_follows_the_newest_version(staff, owner, values, status):
    model = found_model("ORPHAN", *values)

    services.model_assign_owner(actor=caller_from_user(staff), model=model, owner_user=owner)

    assert owner_facts(model) == (owner.pk, None, status)
    assert AuditLog.objects.get().details["status"] == status


# --- the admin action ---------------------------------------------------------------------------


def run_action(client, *models: Model, **form):
    return client.post(
        MODELS_ADMIN,
        {"action": "assign_owner", "_selected_action": [str(m.pk) for m in models], **form},
        follow=True,
    )


def shown_messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_the_admin_action_asks_for_the_owner_then_assigns_it(client, staff, owner, outsider):
    orphan = found_model("ORPHAN", 0.9)
    claimed = found_model("CLAIMED", owner_user=outsider, status="registered")
    client.force_login(staff)
    assert "assign_owner" in client.get(MODELS_ADMIN).content.decode()

    form_page = run_action(client, orphan, claimed)

    assert form_page.status_code == 200
    assert form_page.templates[0].name == "admin/registry/model/assign_owner.html"
    page = form_page.content.decode()
    assert 'name="owner_user"' in page
    # The form posts the action and the selection again, as the next request does.
    assert '<input type="hidden" name="action" value="assign_owner">' in page
    for model in (orphan, claimed):
        assert f'<input type="hidden" name="_selected_action" value="{model.pk}">' in page
    assert owner_facts(orphan) == (None, None, "unclaimed")  # nothing yet

    done = run_action(client, orphan, claimed, owner_user=str(owner.pk), apply="Assign owner")

    assert done.redirect_chain == [(MODELS_ADMIN, 302)]
    assert owner_facts(orphan) == (owner.pk, None, "ready_to_deploy")
    assert owner_facts(claimed) == (outsider.pk, None, "registered")
    assert sorted(shown_messages(done)) == [
        "CLAIMED: Only an unclaimed model gets an owner here; this one is registered.",
        "ORPHAN now belongs to owner (ready_to_deploy).",
    ]
    entry = AuditLog.objects.get()
    assert (entry.action, entry.target_id, entry.actor_label) == (
        "model.owner_assigned",
        "orphan",
        "operator",
    )


def test_the_admin_form_wants_exactly_one_owner(client, staff, owner, identity):
    orphan = found_model("ORPHAN")
    client.force_login(staff)

    response = run_action(
        client, orphan, owner_user=str(owner.pk), owner_identity=str(identity.pk), apply="Assign"
    )

    assert response.status_code == 200
    assert response.context["form"].errors == {
        "owner_identity": ["A model has one owner: choose a user or an identity."]
    }
    assert owner_facts(orphan) == (None, None, "unclaimed")
    assert not AuditLog.objects.exists()


def test_a_user_who_is_not_staff_cannot_run_the_action(client, outsider, owner):
    orphan = found_model("ORPHAN")
    client.force_login(outsider)

    response = client.post(
        MODELS_ADMIN,
        {"action": "assign_owner", "_selected_action": [str(orphan.pk)], "owner_user": owner.pk},
    )

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert owner_facts(orphan) == (None, None, "unclaimed")


def test_staff_without_models_write_see_models_but_cannot_assign(client, staff, owner, monkeypatch):
    """Every staff session holds `admin` today; the action asks for `models:write` (what
    changes a model through the API), so a session with less does not get it."""
    monkeypatch.setattr(
        "authkeys.admin.caller_from_user",
        lambda user: Caller(
            kind="user",
            label=user.get_username(),
            scopes=frozenset({MODELS_READ}),
            user_id=user.pk,
            is_staff=True,
        ),
    )
    orphan = found_model("ORPHAN")
    client.force_login(staff)

    listed = client.get(MODELS_ADMIN)
    response = run_action(client, orphan, owner_user=str(owner.pk), apply="Assign owner")

    assert listed.status_code == 200
    assert "ORPHAN" in listed.content.decode()
    assert "assign_owner" not in listed.content.decode()
    assert not any("assign_owner" in (t.name or "") for t in response.templates)
    assert owner_facts(orphan) == (None, None, "unclaimed")
    assert not AuditLog.objects.exists()
