"""Registering model versions under token symbols, keeping MLflow and our tables consistent.

Order of work in a registration: every check and every MLflow write first (run and artifact
exist, registered model, version, tags, READY), then one database transaction with our rows,
the audit entry and the outbox events. MLflow failing or timing out leaves nothing on our side.
A failure after MLflow created the version is finished by the retry, which finds that version
(same registered model, run and source) instead of creating another: `registry.attempts` tells
it to look, so a first registration of a logged model is a single MLflow call.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction

from authkeys.principals import Caller
from hokusai_site.errors import ApplicationError
from registry import audit, mlflow, selectors
from registry.attempts import (
    ATTEMPT_MEMORY,
    Attempt,
    forget_failed_attempts,
    registration_attempt,
)
from registry.metrics import METRICS
from registry.models import Model, ModelVersion
from webhooks.outbox import record_events

READY = "READY"
FAILED = "FAILED_REGISTRATION"
POLL_SECONDS = 0.2
# DESIGN.md's token rule (anchored: DRF's RegexField searches rather than matches).
TOKEN_SYMBOL = re.compile(r"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?\Z")


@dataclass(frozen=True)
class VersionFacts:
    """What one registration or registration event says about a version."""

    model_name: str
    token_symbol: str
    metric_name: str
    baseline_value: float
    current_value: float | None = None
    proposal_identifier: str = ""
    contributor_address: str = ""
    description: str = ""
    tags: dict | None = None


@dataclass(frozen=True)
class Source:
    run_id: str
    source: str
    model_id: str | None  # MLflow 3's logged model, when the source is one


# --- MLflow side --------------------------------------------------------------------------------


def mlflow_failure(exc: Exception) -> ApplicationError:
    if isinstance(exc, mlflow.MlflowUnavailable):
        return ApplicationError(
            "mlflow_unavailable", "MLflow did not answer; nothing was registered.", status=503
        )
    return ApplicationError("mlflow_error", f"MLflow refused: {exc}", status=502)


def resolve_source(
    *, model_uri: str | None, run_id: str | None, artifact_path: str | None
) -> Source:
    """The version's source as MLflow's own register_model resolves it; 422 naming the field
    when the run or the model in it does not exist."""
    if model_uri and model_uri.startswith("models:/"):
        model_id = model_uri.removeprefix("models:/")
        logged = mlflow.get_logged_model(model_id)
        if logged is None:
            raise _unknown("model_uri", f"No logged model {model_id} in MLflow.")
        return Source(logged["info"].get("source_run_id", ""), model_uri, model_id)
    if model_uri:
        run_id, _, artifact_path = model_uri.removeprefix("runs:/").partition("/")
        field = "model_uri"
    else:
        field = "artifact_path"
    run = mlflow.get_run(run_id)
    if run is None:
        raise _unknown("model_uri" if model_uri else "run_id", f"No run {run_id} in MLflow.")
    files = mlflow.list_artifacts(run_id, artifact_path)
    if any(f["path"].rsplit("/", 1)[-1] == "MLmodel" for f in files):
        return Source(run_id, f"{run['info']['artifact_uri']}/{artifact_path}", None)
    logged = mlflow.logged_models_of_run(run, artifact_path)
    if len(logged) != 1:
        problem = "no model" if not logged else "several models"
        raise _unknown(
            field,
            f"Run {run_id} has {problem} at {artifact_path!r}"
            + ("." if not logged else "; register models:/<model_id> instead."),
        )
    model_id = logged[0]["info"]["model_id"]
    return Source(run_id, f"models:/{model_id}", model_id)


def _unknown(field: str, message: str) -> ApplicationError:
    return ApplicationError(
        "mlflow_resource_not_found", message, status=422, extra={"field": field}
    )


def version_tags(facts: VersionFacts, caller_label: str) -> dict[str, str]:
    tags = {
        "hokusai_token_id": facts.token_symbol,
        "benchmark_metric": facts.metric_name,
        "benchmark_value": repr(facts.baseline_value),
        "hokusai_status": "registered",
        "hokusai_proposal_identifier": facts.proposal_identifier,
        "hokusai_registered_by": caller_label,
    }
    if facts.current_value is not None:
        tags["hokusai_current_value"] = repr(facts.current_value)
    return tags


def ensure_version(
    *,
    name: str,
    model: Model | None,
    model_uri: str | None,
    run_id: str | None,
    artifact_path: str | None,
    tags: dict[str, str],
    first_attempt: bool,
) -> dict:
    """The MLflow version of `name` made from the requested source: a new one, or the one an
    earlier attempt (or sync) left unannounced. 409 when our registry announced it already.

    A first registration of a logged model is one MLflow call (see `create_from_logged_model`).
    """
    if first_attempt and model_uri and model_uri.startswith("models:/"):
        model_id = model_uri.removeprefix("models:/")
        source = Source(run_id="", source=model_uri, model_id=model_id)
    else:
        source = resolve_source(model_uri=model_uri, run_id=run_id, artifact_path=artifact_path)
    recorded = selectors.version_from_source(model, source.source) if model else None
    if recorded is not None and recorded.announced:
        raise ApplicationError(
            "version_already_registered",
            f"Version {recorded.version} of {name} was registered from {source.source} already.",
            status=409,
            extra={"version": recorded.version},
        )
    if model is None:
        mlflow.ensure_registered_model(name)
    if recorded is not None or not first_attempt:
        run = source.run_id or recorded.run_id
        for version in mlflow.search_model_versions(f"name='{name}' and run_id='{run}'"):
            if version.get("source") == source.source:
                mlflow.set_model_version_tags(name, version["version"], tags)
                return version
    if not source.run_id:
        return create_from_logged_model(name, source.model_id, tags)
    return mlflow.create_model_version(
        name=name, source=source.source, run_id=source.run_id, model_id=source.model_id, tags=tags
    )


def create_from_logged_model(name: str, model_id: str, tags: dict[str, str]) -> dict:
    """A version of `name` from logged model `model_id`, in one call: MLflow looks the model up
    (and takes its run) before it creates anything. Only when that fails do we ask whether
    the model exists, to answer 422 naming the field rather than pass MLflow's 500 on."""
    try:
        return mlflow.create_model_version(
            name=name, source=f"models:/{model_id}", run_id=None, model_id=model_id, tags=tags
        )
    except (mlflow.MlflowUnavailable, mlflow.MlflowError):
        if mlflow.get_logged_model(model_id) is None:
            raise _unknown("model_uri", f"No logged model {model_id} in MLflow.") from None
        raise


def wait_until_ready(name: str, version: dict) -> dict:
    """The version once MLflow reports it READY (at once when it already says so)."""
    deadline = time.monotonic() + settings.HOKUSAI_REGISTRATION_READY_TIMEOUT_SECONDS
    found = version
    while True:
        status = (found or {}).get("status")
        if status == READY:
            return found
        if status == FAILED:
            raise ApplicationError(
                "mlflow_registration_failed",
                f"MLflow failed to register version {version['version']}: "
                f"{found.get('status_message') or 'no reason given'}",
                status=502,
            )
        if time.monotonic() >= deadline:
            raise ApplicationError(
                "mlflow_timeout",
                f"MLflow did not report version {version['version']} READY in time; "
                "retry to finish.",
                status=503,
            )
        time.sleep(POLL_SECONDS)
        found = mlflow.get_model_version(name, version["version"])


# --- Our side -----------------------------------------------------------------------------------


def check_ownership(*, actor: Caller, facts: VersionFacts) -> Model | None:
    """The model these facts belong to, if it exists; 409 when it is someone else's or the
    token and the MLflow name disagree with what is registered."""
    found = selectors.models_by_token_or_name(facts.token_symbol, facts.model_name)
    for model in found:
        if model.token_symbol != facts.token_symbol:
            raise ApplicationError(
                "model_name_taken",
                f"{facts.model_name} is registered under token {model.token_symbol}.",
                status=409,
            )
        if model.name != facts.model_name:
            raise ApplicationError(
                "token_symbol_taken",
                f"Token {facts.token_symbol} is registered as model {model.name}.",
                status=409,
            )
        if not owned_by(model, actor):
            raise ApplicationError(
                "token_symbol_taken",
                f"Token {facts.token_symbol} belongs to another owner.",
                status=409,
            )
        if model.metric_name != facts.metric_name:
            raise ApplicationError(
                "metric_mismatch",
                f"{model.token_symbol} is measured by {model.metric_name}, "
                f"not {facts.metric_name}.",
                status=422,
                extra={"field": "metric_name"},
            )
    return found[0] if found else None


def owned_by(model: Model, actor: Caller) -> bool:
    if actor.is_staff or actor.kind == "system":
        return True
    if model.owner_user_id is not None:
        return model.owner_user_id == actor.user_id
    if model.owner_identity_id is not None:
        return model.owner_identity_id == actor.identity_id
    return False  # unclaimed: only staff may take it


def record_version(
    *, actor: Caller, facts: VersionFacts, model: Model | None, mlflow_version: dict
) -> tuple[ModelVersion, bool]:
    """Our rows for a READY MLflow version, its audit entry and its events; in the caller's
    transaction. Returns the version and whether events were recorded now (False: it was
    announced before, and this is a repeat). A version recorded now comes back with its model
    as the read API shows it: with its newest version as `latest_versions`."""
    metric = METRICS[facts.metric_name]
    new_model = model is None
    if new_model:
        model = Model(
            model_id=facts.token_symbol.lower(),
            token_symbol=facts.token_symbol,
            name=facts.model_name,
            owner_user_id=actor.user_id,
            owner_identity_id=None if actor.user_id is not None else actor.identity_id,
            metric_name=facts.metric_name,
            metric_direction=metric.direction,
            tags=dict(facts.tags or {}),
        )
    model.baseline_value = facts.baseline_value
    changed = ["baseline_value", "status", "updated_at"]
    if facts.description:
        model.description = facts.description
        changed.append("description")
    if facts.tags:
        changed.append("tags")  # an existing model's: merged into its tags as they are, last
    beats = metric.beats(facts.current_value, facts.baseline_value)
    model.status = "ready_to_deploy" if beats else "registered"
    if new_model:
        model.save()  # its first version points at it
    number = int(mlflow_version["version"])
    # This number's row (sync or an earlier attempt may have written it) and the newest, in one
    # query: a retry can finish a version older than the newest.
    later = [] if new_model else selectors.versions_from(model, number)
    version = next((known for known in later if known.version == number), None)
    if version is None:
        version = ModelVersion(
            model=model,
            version=number,
            run_id=mlflow_version.get("run_id", ""),
            source=mlflow_version.get("source", ""),
            registered_by=actor.label,
        )
    elif version.announced:
        return version, False
    version.current_value = facts.current_value
    version.proposal_identifier = facts.proposal_identifier
    version.contributor_address = facts.contributor_address
    version.mlflow_status = mlflow_version.get("status", version.mlflow_status)
    version.announced = True
    version.save()
    model.latest_versions = [later[0] if later and later[0].version > number else version]
    audit.model_version_registered(actor=actor, version=version)
    record_events(
        event_types=["model_registered", "model_ready_to_deploy"]
        if beats
        else ["model_registered"],
        model=event_model(version, actor),
        data=event_data(version, metric_name=facts.metric_name),
    )
    if not new_model:
        # Last: updating the model's row locks it until the transaction ends, and every other
        # registration of this model waits for that lock. Only what this registration changed,
        # so what someone else changed meanwhile (an edited description, say) stays; its tags
        # go into the tags as they are now, under that lock, not as loaded before MLflow worked.
        if facts.tags:
            now_tagged = Model.objects.select_for_update().filter(pk=model.pk)
            model.tags = {**now_tagged.values_list("tags", flat=True).get(), **facts.tags}
        model.save(update_fields=changed)
    return version, True


def event_model(version: ModelVersion, actor: Caller) -> dict:
    model = version.model
    return {
        "id": model.model_id,
        "name": model.name,
        "token_symbol": model.token_symbol,
        "version": str(version.version),
        "status": model.status,
        "run_id": version.run_id,
        "user_id": actor.identity,
    }


def event_data(version: ModelVersion, *, metric_name: str) -> dict:
    model = version.model
    metric = METRICS[metric_name]
    current = version.current_value
    return {
        "metric_name": metric_name,
        "baseline_value": model.baseline_value,
        "current_value": current,
        "improvement_percentage": None
        if current is None
        else metric.improvement_percentage(current, model.baseline_value),
        "proposal_identifier": version.proposal_identifier,
        "contributor_address": version.contributor_address,
        "source": version.source,
    }


# --- The two ways in ----------------------------------------------------------------------------


def model_register(
    *,
    actor: Caller,
    facts: VersionFacts,
    model_uri: str | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
    on_recorded: Callable[[ModelVersion], None] | None = None,
) -> ModelVersion:
    """`POST /api/v1/models/register`: creates (or, on a retry, finds) the MLflow version and
    records it; 409 when that version is registered already. `on_recorded` runs inside the
    transaction that records it (to store an idempotent answer with it). No transaction is
    open while MLflow works."""
    model = check_ownership(actor=actor, facts=facts)
    requested = model_uri or f"runs:/{run_id}/{artifact_path}"
    with registration_attempt(facts.model_name, requested) as attempt:
        try:
            created = ensure_version(
                name=facts.model_name,
                model=model,
                model_uri=model_uri,
                run_id=run_id,
                artifact_path=artifact_path,
                tags=version_tags(facts, actor.identity),
                first_attempt=attempt.first,
            )
            ready = wait_until_ready(facts.model_name, created)
        except (mlflow.MlflowUnavailable, mlflow.MlflowError) as exc:
            raise mlflow_failure(exc) from exc

        try:
            return _record_new_version(actor, facts, model, ready, attempt, on_recorded)
        except IntegrityError:
            # The model row was created meanwhile: by a twin request of this owner (use it),
            # or by someone else (check_ownership says 409).
            model = check_ownership(actor=actor, facts=facts)
        try:
            return _record_new_version(actor, facts, model, ready, attempt, on_recorded)
        except IntegrityError:
            raise ApplicationError(
                "token_symbol_taken",
                f"Token {facts.token_symbol} or model {facts.model_name} was registered meanwhile.",
                status=409,
            ) from None


def _record_new_version(
    actor: Caller,
    facts: VersionFacts,
    model: Model | None,
    ready: dict,
    attempt: Attempt,
    on_recorded: Callable[[ModelVersion], None] | None,
) -> ModelVersion:
    with transaction.atomic():
        attempt.finish()
        version, announced = record_version(
            actor=actor, facts=facts, model=model, mlflow_version=ready
        )
        if not announced:  # raised inside: the model keeps its facts as they were
            raise ApplicationError(
                "version_already_registered",
                f"Version {version.version} of {facts.model_name} is registered already.",
                status=409,
                extra={"version": version.version},
            )
        if on_recorded is not None:
            on_recorded(version)
    return version


def registration_event_record(*, actor: Caller, facts: VersionFacts, version: str) -> ModelVersion:
    """The original SDK's registration event, for a version it created through the proxy.
    Repeating it is harmless: the second time changes and announces nothing."""
    model = check_ownership(actor=actor, facts=facts)
    tags = {**version_tags(facts, actor.identity), "user_id": actor.identity}
    try:
        found = mlflow.get_model_version(facts.model_name, version)
        if found is None:
            raise ApplicationError(
                "mlflow_resource_not_found",
                f"MLflow has no version {version} of {facts.model_name}.",
                status=422,
                extra={"field": "version"},
            )
        mlflow.set_model_version_tags(facts.model_name, version, tags)
        ready = wait_until_ready(facts.model_name, found)
    except (mlflow.MlflowUnavailable, mlflow.MlflowError) as exc:
        raise mlflow_failure(exc) from exc
    with transaction.atomic():
        recorded, _ = record_version(actor=actor, facts=facts, model=model, mlflow_version=ready)
    return recorded


def model_update(*, actor: Caller, model: Model, **changes) -> Model:
    """Description and tags, by the owner or staff."""
    if not owned_by(model, actor):
        raise ApplicationError(
            "not_model_owner", "Only the model's owner may change it.", status=403
        )
    changed = {f: (getattr(model, f), v) for f, v in changes.items() if getattr(model, f) != v}
    if changed:
        with transaction.atomic():
            for field, (_, new) in changed.items():
                setattr(model, field, new)
            model.save(update_fields=[*changed, "updated_at"])
            audit.model_updated(actor=actor, model=model, changes=changed)
    return model


def model_assign_owner(
    *, actor: Caller, model: Model, owner_user=None, owner_identity=None
) -> Model:
    """Gives a model sync found in MLflow (`unclaimed`) its owner: a user or an Ethereum
    identity; staff only. Its status becomes what registering its newest version would have
    made it. Returns the model as saved."""
    if not (actor.is_staff or actor.kind == "system"):
        raise ApplicationError("not_staff", "Only staff may assign a model's owner.", status=403)
    if (owner_user is None) == (owner_identity is None):
        raise ApplicationError(
            "owner_required", "Choose one owner: a user or an Ethereum identity.", status=400
        )
    with transaction.atomic():
        # Locked and read again: two operators assigning at once must not both succeed.
        model = Model.objects.select_for_update().get(pk=model.pk)
        if model.status != "unclaimed":
            raise ApplicationError(
                "model_not_unclaimed",
                f"Only an unclaimed model gets an owner here; this one is {model.status}.",
                status=409,
            )
        model.owner_user = owner_user
        model.owner_identity = owner_identity
        newest = selectors.model_versions(model).first()
        current = newest.current_value if newest is not None else None
        beats = METRICS[model.metric_name].beats(current, model.baseline_value)
        model.status = "ready_to_deploy" if beats else "registered"
        model.save(update_fields=["owner_user", "owner_identity", "status", "updated_at"])
        audit.model_owner_assigned(actor=actor, model=model, owner_label=model.owner_label)
    return model


# --- Sync: MLflow -> registry -------------------------------------------------------------------


@dataclass
class SyncReport:
    models_created: int = 0
    versions_created: int = 0
    versions_updated: int = 0


def registry_sync() -> SyncReport:
    """Versions made in MLflow directly (e.g. through the proxy) appear in the registry.

    Reads MLflow, never writes or deletes there; running it again changes nothing. A version
    of a registered model we do not know is taken in only when its tags name a free token
    symbol and a valid benchmark (the original SDK sets them); that model is `unclaimed` until
    staff assign an owner. Found versions are not announced: events come from the registration
    routes, which claim such a version when the client reports it.
    """
    report = SyncReport()
    try:
        found = mlflow.search_model_versions()
    except (mlflow.MlflowUnavailable, mlflow.MlflowError) as exc:
        raise mlflow_failure(exc) from exc
    # What a failed registration left in MLflow is in our registry after this run (as a
    # found version its source's next registration claims), so its attempt row can go.
    forget_failed_attempts(older_than=ATTEMPT_MEMORY)
    models = {model.name: model for model in Model.objects.all()}
    for mlflow_version in found:
        tags = {tag["key"]: tag["value"] for tag in mlflow_version.get("tags", [])}
        model = models.get(mlflow_version["name"])
        if model is None:
            model = _unclaimed_model(mlflow_version["name"], tags)
            if model is None:
                continue
            models[model.name] = model
            report.models_created += 1
        with transaction.atomic():
            version, created = ModelVersion.objects.get_or_create(
                model=model,
                version=int(mlflow_version["version"]),
                defaults={
                    "run_id": mlflow_version.get("run_id", ""),
                    "source": mlflow_version.get("source", ""),
                    "mlflow_status": mlflow_version.get("status", ""),
                    "current_value": _number(tags.get("hokusai_current_value")),
                    "proposal_identifier": tags.get("hokusai_proposal_identifier", "")[:256],
                    "registered_by": "sync",
                },
            )
            if created:
                report.versions_created += 1
            elif version.mlflow_status != mlflow_version.get("status", version.mlflow_status):
                version.mlflow_status = mlflow_version["status"]
                version.save(update_fields=["mlflow_status"])
                report.versions_updated += 1
    return report


def _unclaimed_model(name: str, tags: dict[str, str]) -> Model | None:
    token = tags.get("hokusai_token_id", "").upper()
    metric = METRICS.get(tags.get("benchmark_metric", ""))
    baseline = _number(tags.get("benchmark_value"))
    if not token or metric is None or baseline is None or metric.range_error(baseline):
        return None
    if not TOKEN_SYMBOL.fullmatch(token) or Model.objects.filter(token_symbol=token).exists():
        return None
    return Model.objects.create(
        model_id=token.lower(),
        token_symbol=token,
        name=name,
        metric_name=metric.name,
        metric_direction=metric.direction,
        baseline_value=baseline,
        status="unclaimed",
    )


def _number(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
