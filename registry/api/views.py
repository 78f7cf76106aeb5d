import re

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from authkeys.ethereum import EthAuthError, decode_address
from authkeys.permissions import HasScopes
from authkeys.principals import Caller, caller_of
from authkeys.scopes import AUDIT_READ, MODELS_READ, MODELS_WRITE
from hokusai_site.idempotency import idempotent
from hokusai_site.pagination import paginated_response
from registry import selectors, services
from registry.metrics import METRICS
from registry.models import AuditLog, Model, ModelVersion

TOKEN_SYMBOL = services.TOKEN_SYMBOL
# A conservative subset of what MLflow allows: it also goes into MLflow search filters.
MODEL_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9 _.\-]{0,255}\Z")
RUN_ID = re.compile(r"\A[0-9a-f]{32}\Z")
RUNS_URI = re.compile(r"runs:/([0-9a-f]{32})/(.+)")
MODELS_URI = re.compile(r"models:/m-[0-9a-f]{32}")
# Path segments of /api/v1/models/… that a model id would collide with.
RESERVED_MODEL_IDS = frozenset({"register"})
MAX_TAGS = 50
MAX_TAG_KEY = 250
MAX_TAG_VALUE = 5000


def check_artifact_path(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if path.startswith("/") or ".." in parts or not path.isprintable() or len(path) > 512:
        raise serializers.ValidationError("Must be a relative path inside the run, without '..'.")
    return path


class TagsField(serializers.DictField):
    """str -> str, bounded like MLflow's own tags."""

    child = serializers.CharField(max_length=MAX_TAG_VALUE, allow_blank=True)

    def to_internal_value(self, data):
        if isinstance(data, dict) and not all(isinstance(v, str) for v in data.values()):
            raise serializers.ValidationError("Tag values must be strings.")
        tags = super().to_internal_value(data)
        if len(tags) > MAX_TAGS:
            raise serializers.ValidationError(f"At most {MAX_TAGS} tags.")
        for key in tags:
            if not key or len(key) > MAX_TAG_KEY or not key.isprintable():
                raise serializers.ValidationError(f"Tag names are 1 to {MAX_TAG_KEY} characters.")
        return tags


class VersionFactsSerializer(serializers.Serializer):
    """What both registration routes say about a version, checked per DESIGN.md."""

    model_name = serializers.RegexField(MODEL_NAME)
    token_symbol = serializers.RegexField(TOKEN_SYMBOL)
    metric_name = serializers.ChoiceField(choices=sorted(METRICS))
    baseline_value = serializers.FloatField()
    current_value = serializers.FloatField(required=False, allow_null=True)
    proposal_identifier = serializers.CharField(max_length=256, required=False, allow_blank=True)
    contributor_address = serializers.CharField(max_length=42, required=False, allow_blank=True)
    description = serializers.CharField(max_length=5000, required=False, allow_blank=True)
    tags = TagsField(required=False)

    def validate_token_symbol(self, value: str) -> str:
        if value.lower() in RESERVED_MODEL_IDS:
            raise serializers.ValidationError(f"{value} is reserved.")
        return value

    def validate_contributor_address(self, value: str) -> str:
        if not value:
            return value
        try:
            return decode_address(value)
        except EthAuthError:
            raise serializers.ValidationError("Must be 0x and 40 hex digits.") from None

    def validate(self, data):
        metric = METRICS[data["metric_name"]]
        errors = {}
        for field in ("baseline_value", "current_value"):
            value = data.get(field)
            if value is not None and (problem := metric.range_error(value)):
                errors[field] = [problem]
        if errors:
            raise serializers.ValidationError(errors)
        return data

    def facts(self, **overrides) -> services.VersionFacts:
        data = {
            field: value
            for field, value in self.validated_data.items()
            if field in services.VersionFacts.__dataclass_fields__
        }
        data.update(overrides)
        data["token_symbol"] = data["token_symbol"].upper()
        return services.VersionFacts(**data)


# Plain serializers, not ModelSerializers: those rebuild their fields from the model on every
# instance, a third of a registration's CPU when measured.
class VersionOutputSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    current_value = serializers.FloatField(allow_null=True)
    mlflow_status = serializers.CharField()
    proposal_identifier = serializers.CharField()
    created_at = serializers.DateTimeField()


class OwnedVersionOutputSerializer(VersionOutputSerializer):
    """What only the model's owner (or staff) sees of a version."""

    run_id = serializers.CharField()
    source = serializers.CharField()
    contributor_address = serializers.CharField()
    registered_by = serializers.CharField()


class ModelFieldsSerializer(serializers.Serializer):
    """A model's own fields, as every answer about it shows them (with its owner, which
    `model_output` adds)."""

    model_id = serializers.CharField()
    name = serializers.CharField()
    token_symbol = serializers.CharField()
    description = serializers.CharField()
    metric_name = serializers.CharField()
    metric_direction = serializers.ChoiceField(choices=Model.DIRECTION_CHOICES)
    baseline_value = serializers.FloatField()
    tags = serializers.DictField(child=serializers.CharField())
    status = serializers.ChoiceField(choices=Model.STATUS_CHOICES)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ModelOutputSerializer(ModelFieldsSerializer):
    """The answer's shape, for the schema; `model_output` fills it in."""

    owner = serializers.CharField(help_text="Username or wallet address (or its label)")
    latest_version = OwnedVersionOutputSerializer(
        allow_null=True,
        help_text="The newest version. run_id, source, contributor_address and registered_by "
        "are shown to the model's owner and staff only.",
    )


# One instance of each for every answer: filling one in keeps no state, and building a
# serializer's fields anew for each answer cost as much as filling them in.
MODEL_FIELDS = ModelFieldsSerializer()
VERSION_OUTPUT = VersionOutputSerializer()
OWNED_VERSION_OUTPUT = OwnedVersionOutputSerializer()


def version_output(version: ModelVersion, caller) -> dict:
    owned = services.owned_by(version.model, caller)
    return (OWNED_VERSION_OUTPUT if owned else VERSION_OUTPUT).to_representation(version)


def model_output(model: Model, request) -> dict:
    caller = caller_of(request)
    latest = model.latest_versions[0] if model.latest_versions else None
    return {
        **MODEL_FIELDS.to_representation(model),
        "owner": owner_shown(model, caller),
        "latest_version": None if latest is None else version_output(latest, caller),
    }


def owner_shown(model: Model, caller: Caller | None) -> str:
    """`model.owner_label`, without querying the owner when it is the calling user: the
    caller carries that user's name (a registration answers with a model of the caller's,
    and the query cost ~1 ms of its CPU)."""
    by_user = caller is not None and caller.kind in ("user", "api_key")
    if by_user and caller.user_id is not None and caller.user_id == model.owner_user_id:
        return caller.identity
    return model.owner_label


def callers_view_of(model_id: str) -> Model:
    return get_object_or_404(selectors.models_list(), model_id=model_id.lower())


class ModelsApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"GET": MODELS_READ}

    class FilterSerializer(serializers.Serializer):
        token_symbol = serializers.CharField(max_length=64, required=False)
        owner = serializers.CharField(max_length=150, required=False)
        search = serializers.CharField(max_length=256, required=False)
        status = serializers.ChoiceField(
            choices=[c for c, _ in Model.STATUS_CHOICES], required=False
        )

    @extend_schema(
        summary="Registered models, filtered and paginated",
        parameters=[FilterSerializer],
        responses=ModelOutputSerializer(many=True),
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return paginated_response(
            request,
            self,
            selectors.models_list(**filters.validated_data),
            lambda page: [model_output(model, request) for model in page],
        )


class ModelRegisterApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"POST": MODELS_WRITE}

    class InputSerializer(VersionFactsSerializer):
        model_uri = serializers.CharField(max_length=1024, required=False)
        run_id = serializers.RegexField(RUN_ID, required=False)
        artifact_path = serializers.CharField(max_length=512, required=False)

        def validate_artifact_path(self, value: str) -> str:
            return check_artifact_path(value)

        def validate_model_uri(self, value: str) -> str:
            runs = RUNS_URI.fullmatch(value)
            if runs:
                check_artifact_path(runs.group(2))
            elif not MODELS_URI.fullmatch(value):
                raise serializers.ValidationError(
                    "Must be runs:/<run_id>/<artifact_path> or models:/<model_id>."
                )
            return value

        def validate(self, data):
            data = super().validate(data)
            by_run = "run_id" in data or "artifact_path" in data
            both_run_fields = {"run_id", "artifact_path"} <= set(data)
            if ("model_uri" in data) == by_run or (by_run and not both_run_fields):
                raise serializers.ValidationError(
                    "Give model_uri, or run_id with artifact_path (not both)."
                )
            return data

    @extend_schema(
        summary="Register a model version under a token symbol",
        request=InputSerializer,
        responses={201: ModelOutputSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        caller = caller_of(request)
        with idempotent(
            operation="model_register",
            caller=caller,
            key=request.headers.get("Idempotency-Key"),
            payload=serializer.validated_data,
        ) as claim:
            if claim.replay is not None:
                replay_status, body = claim.replay
                return Response(body, status=replay_status)
            answer: dict = {}

            def answer_with(version: ModelVersion) -> None:
                answer.update(model_output(version.model, request))
                claim.answer(status.HTTP_201_CREATED, answer)

            services.model_register(
                actor=caller,
                facts=serializer.facts(),
                model_uri=serializer.validated_data.get("model_uri"),
                run_id=serializer.validated_data.get("run_id"),
                artifact_path=serializer.validated_data.get("artifact_path"),
                on_recorded=answer_with,
            )
        return Response(answer, status=status.HTTP_201_CREATED)


class ModelDetailApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"GET": MODELS_READ, "PATCH": MODELS_WRITE}

    class UpdateInputSerializer(serializers.Serializer):
        description = serializers.CharField(max_length=5000, required=False, allow_blank=True)
        tags = TagsField(required=False)

    @extend_schema(summary="One model with its latest version", responses=ModelOutputSerializer)
    def get(self, request, model_id: str):
        return Response(model_output(callers_view_of(model_id), request))

    @extend_schema(
        summary="Change a model's description or tags (its owner or staff)",
        request=UpdateInputSerializer,
        responses=ModelOutputSerializer,
    )
    def patch(self, request, model_id: str):
        serializer = self.UpdateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # The model as loaded (its newest version with it), changed in place by the service.
        model = services.model_update(
            actor=caller_of(request), model=callers_view_of(model_id), **serializer.validated_data
        )
        return Response(model_output(model, request))


class ModelVersionsApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"GET": MODELS_READ}

    @extend_schema(
        summary="A model's versions, newest first",
        responses=OwnedVersionOutputSerializer(many=True),
    )
    def get(self, request, model_id: str):
        caller = caller_of(request)
        return paginated_response(
            request,
            self,
            selectors.model_versions(callers_view_of(model_id)),
            lambda page: [version_output(version, caller) for version in page],
        )


class RegistrationEventApi(APIView):
    """The original SDK's route: it created the version through the proxy, this records it."""

    permission_classes = [HasScopes]
    required_scopes = {"POST": MODELS_WRITE}

    class InputSerializer(VersionFactsSerializer):
        """The original SDK's field names: `token_id` is the token symbol."""

        token_symbol = None
        token_id = serializers.RegexField(TOKEN_SYMBOL)
        version = serializers.RegexField(r"\A[1-9][0-9]{0,9}\Z")
        mlflow_run_id = serializers.CharField(max_length=64, required=False, allow_blank=True)
        model_uri = serializers.CharField(max_length=1024, required=False, allow_blank=True)

    class OutputSerializer(serializers.Serializer):
        status = serializers.CharField()
        model_id = serializers.CharField()
        model_name = serializers.CharField()
        version = serializers.CharField()
        event_emitted = serializers.BooleanField()
        detail = serializers.CharField(allow_null=True)

    @extend_schema(
        summary="Record a version created through the proxy (original SDK)",
        request=InputSerializer,
        responses=OutputSerializer,
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        caller = caller_of(request)
        tags = serializer.validated_data.get("tags", {})
        # Whoever the client claims to be, the version is recorded as the caller's.
        facts = serializer.facts(
            token_symbol=serializer.validated_data["token_id"],
            tags={**tags, "user_id": caller.identity},
        )
        version = services.registration_event_record(
            actor=caller, facts=facts, version=serializer.validated_data["version"]
        )
        return Response(
            {
                "status": "ok",
                "model_id": f"{facts.model_name}/{version.version}/{facts.token_symbol}",
                "model_name": facts.model_name,
                "version": str(version.version),
                "event_emitted": True,
                "detail": None,
            }
        )


class AuditLogsApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"GET": AUDIT_READ}

    class FilterSerializer(serializers.Serializer):
        action = serializers.CharField(max_length=64, required=False)
        target_type = serializers.CharField(max_length=64, required=False)
        target_id = serializers.CharField(max_length=64, required=False)
        actor = serializers.CharField(max_length=150, required=False)
        since = serializers.DateTimeField(required=False)
        until = serializers.DateTimeField(required=False)

    class OutputSerializer(serializers.ModelSerializer):
        class Meta:
            model = AuditLog
            fields = [
                "id",
                "created_at",
                "actor_kind",
                "actor_label",
                "action",
                "target_type",
                "target_id",
                "details",
                "ip",
                "request_id",
            ]

    @extend_schema(
        summary="The audit log, newest first",
        parameters=[FilterSerializer],
        responses=OutputSerializer(many=True),
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return paginated_response(
            request,
            self,
            selectors.audit_log(**filters.validated_data),
            lambda page: self.OutputSerializer(page, many=True).data,
        )
