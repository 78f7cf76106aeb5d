"""`/api/v1/models/{model_id}/contributions`: data contributors send a file or JSON rows."""

from django.conf import settings
from django.utils.functional import classproperty
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from authkeys.permissions import HasScopes
from authkeys.principals import caller_of
from authkeys.scopes import CONTRIBUTIONS_WRITE
from hokusai_site.errors import ApplicationError
from hokusai_site.idempotency import idempotent
from hokusai_site.pagination import paginated_response
from registry import contributions
from registry.api.views import callers_view_of
from registry.models import Contribution

# Room for the multipart framing (boundary, part headers) around a file of the largest accepted
# size; the file itself is held to the limit once it is received.
MULTIPART_ALLOWANCE_BYTES = 64 * 1024


class RowsJSONParser(JSONParser):
    """JSON is parsed in memory, so a JSON body keeps the API's usual limit; only files, which
    Django spills to disk, may be as large as the contribution limit."""

    def parse(self, stream, media_type=None, parser_context=None):
        # The body-size middleware has refused a Content-Length that is not a number.
        length = int(parser_context["request"].META.get("CONTENT_LENGTH") or 0)
        limit = settings.MAX_REQUEST_BODY_BYTES
        if length > limit:
            raise ApplicationError(
                "request_too_large",
                f"The JSON body is {length} bytes; JSON rows may be at most {limit} "
                "(upload a file for more).",
                status=413,
            )
        return super().parse(stream, media_type, parser_context)


class ContributionsApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"GET": CONTRIBUTIONS_WRITE, "POST": CONTRIBUTIONS_WRITE}
    parser_classes = [MultiPartParser, RowsJSONParser]

    @classproperty
    def max_body_bytes(cls) -> int:
        """What the body-size middleware allows (read from settings on each request)."""
        return settings.HOKUSAI_CONTRIBUTION_MAX_BYTES + MULTIPART_ALLOWANCE_BYTES

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(required=False, max_length=255)
        rows = serializers.ListField(child=serializers.DictField(), required=False, min_length=1)

        def validate_rows(self, rows: list[dict]) -> list[dict]:
            limit = settings.HOKUSAI_CONTRIBUTION_MAX_ROWS
            if len(rows) > limit:
                raise serializers.ValidationError(f"At most {limit} rows; upload a file for more.")
            return rows

        def validate(self, data):
            if ("file" in data) == ("rows" in data):
                raise serializers.ValidationError(
                    "Send a file (multipart/form-data, field file) or rows (JSON), not both."
                )
            return data

    class OutputSerializer(serializers.ModelSerializer):
        model_id = serializers.CharField(source="model.model_id")

        class Meta:
            model = Contribution
            fields = [
                "id",
                "model_id",
                "contributor",
                "original_name",
                "content_type",
                "size",
                "sha256",
                "status",
                "created_at",
            ]

    @extend_schema(
        summary="The caller's contributions to a model, newest first (staff: everyone's)",
        responses=OutputSerializer(many=True),
    )
    def get(self, request, model_id: str):
        return paginated_response(
            request,
            self,
            contributions.contributions_of(
                actor=caller_of(request), model=callers_view_of(model_id)
            ),
            lambda page: self.OutputSerializer(page, many=True).data,
        )

    @extend_schema(
        summary="Contribute data to a model: a file (multipart/form-data) or JSON rows",
        request=InputSerializer,
        responses={201: OutputSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
    )
    def post(self, request, model_id: str):
        # An unknown model is a 404 before the body is parsed.
        model = callers_view_of(model_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "file" in data:
            content = contributions.content_from_upload(data["file"])
        else:
            content = contributions.content_from_rows(data["rows"])
        caller = caller_of(request)
        with idempotent(
            operation="contribution_create",
            caller=caller,
            key=request.headers.get("Idempotency-Key"),
            payload={
                "model_id": model.model_id,
                "sha256": content.sha256,
                "content_type": content.content_type,
                "original_name": content.original_name,
            },
        ) as claim:
            if claim.replay is not None:
                replay_status, body = claim.replay
                return Response(body, status=replay_status)
            contribution = contributions.contribution_create(
                actor=caller,
                model=model,
                content=content,
                on_recorded=lambda recorded: claim.answer(
                    status.HTTP_201_CREATED, self.OutputSerializer(recorded).data
                ),
            )
        return Response(self.OutputSerializer(contribution).data, status=status.HTTP_201_CREATED)
