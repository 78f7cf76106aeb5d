import platform
from importlib.metadata import version as package_version

import django
from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from hokusai_site import health
from hokusai_site.errors import handle_404


@require_GET
def liveness(request):
    """For load balancers: answers while the process serves, touching no dependency."""
    return JsonResponse({"status": "ok"})


def route_not_found(request):
    return handle_404(request)


class PublicApi(APIView):
    """Platform routes for load balancers and monitors: no credentials, no rate limit."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []


class HealthApi(PublicApi):
    class OutputSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=["ok", "degraded", "down"])
        checks = serializers.DictField(child=serializers.DictField())

    @extend_schema(
        summary="Readiness of the platform and each dependency",
        responses={200: OutputSerializer, 503: OutputSerializer},
    )
    def get(self, request):
        report = health.readiness()
        return Response(report, status=503 if report["status"] == health.DOWN else 200)


class VersionApi(PublicApi):
    @extend_schema(
        summary="Build information",
        responses=inline_serializer(
            "Version",
            {
                "name": serializers.CharField(),
                "version": serializers.CharField(),
                "commit": serializers.CharField(),
                "environment": serializers.CharField(),
                "python": serializers.CharField(),
                "django": serializers.CharField(),
                "mlflow": serializers.CharField(),
            },
        ),
    )
    def get(self, request):
        return Response(
            {
                "name": "hokusai",
                "version": settings.HOKUSAI_VERSION,
                "commit": settings.BUILD_COMMIT,
                "environment": settings.ENVIRONMENT,
                "python": platform.python_version(),
                "django": django.get_version(),
                # The installed distribution's version, without importing all of MLflow.
                "mlflow": package_version("mlflow"),
            }
        )
