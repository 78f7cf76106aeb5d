"""POST /api/v1/models/{model_id}/predict and GET …/health (scope `predict`). Every attempt,
refused ones included, leaves a prediction log row (inference.prediction_log)."""

from __future__ import annotations

import time
import uuid

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from authkeys import keys
from authkeys.authentication import key_from_headers
from authkeys.permissions import HasScopes
from authkeys.principals import caller_of
from authkeys.scopes import PREDICT
from hokusai_site.middleware import body_too_large, content_length
from inference import metrics, model_cache, prediction_log, services


def _who(request) -> tuple[str, str]:
    """(kind, label) of the caller; for one refused before we knew them, who they said they
    were (a key's prefix, an address), marked anonymous."""
    caller = caller_of(request)
    if caller is not None:
        return caller.kind, caller.label
    key = key_from_headers(request.META) if "HTTP_AUTHORIZATION" in request.META else None
    if key:
        try:
            return "anonymous", keys.parse(key).prefix
        except keys.MalformedKey:
            pass
    return "anonymous", request.META.get("HTTP_X_ETH_ADDRESS", "")[:128]


class PredictApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"POST": PREDICT}
    # Checked in initial() rather than by RequestBodyLimitMiddleware, so a 413 is logged too.
    max_body_bytes = None

    def initial(self, request, *args, **kwargs):
        length = content_length(request)
        if length > settings.MODEL_SERVING_MAX_BODY_BYTES:
            self.body = b""  # not read: the log row hashes nothing
            raise body_too_large(length, settings.MODEL_SERVING_MAX_BODY_BYTES)
        super().initial(request, *args, **kwargs)

    def initialize_request(self, request, *args, **kwargs):
        self.started = time.perf_counter()
        self.log_id = uuid.uuid4()
        self.served_version = ""
        self.rows = None
        self.body = None
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(
        summary="Predictions from the model, in MLflow's scoring protocol",
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
    )
    def post(self, request, model_id: str):
        model = services.served_model(model_id)
        # Read as a stream: `request.body` stops at DATA_UPLOAD_MAX_MEMORY_SIZE, and initial()
        # has already refused anything over MODEL_SERVING_MAX_BODY_BYTES.
        self.body = request._request.read()
        prediction_request = services.read_request(self.body)
        self.served_version = services.serving_version(model, prediction_request.model_version)
        prediction = services.predict(model, self.served_version, prediction_request)
        self.rows = prediction.rows
        content = services.encode(
            prediction,
            model_id=model.model_id,
            model_version=prediction.model_version,
            inference_log_id=str(self.log_id),
            request_id=request.request_id,
        )
        return HttpResponse(content, content_type="application/json")

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        seconds = time.perf_counter() - self.started
        model_id = kwargs.get("model_id", "").lower()[:64]
        error_code = ""
        if response.status_code >= 400 and isinstance(response, Response):
            error_code = str((response.data or {}).get("code", ""))[:64]
        kind, label = _who(request)
        prediction_log.record(
            log_id=self.log_id,
            caller_kind=kind,
            caller_label=label,
            model_id=model_id,
            model_version=self.served_version,
            rows=self.rows,
            latency_ms=seconds * 1000,
            status=response.status_code,
            error_code=error_code,
            request_id=getattr(request, "request_id", ""),
            # A refused request's body is read here, to log its hash too.
            body=self.body if self.body is not None else request._request.read(),
        )
        metrics.PREDICTIONS.labels(model_id, self.served_version, response.status_code).inc()
        metrics.PREDICTION_SECONDS.labels(model_id).observe(seconds)
        return response


class ModelHealthApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"GET": PREDICT}

    @extend_schema(
        summary="Whether the serving version is loaded here", responses=OpenApiTypes.OBJECT
    )
    def get(self, request, model_id: str):
        model = services.served_model(model_id)
        version = services.serving_version(model, None)
        key = (model.name, version)
        loaded = model_cache.is_loaded(key)
        return Response(
            {
                "model_id": model.model_id,
                "model_version": version,
                "loaded": loaded,
                "ready": loaded,
                "load_error": model_cache.load_failure(key),
            }
        )
