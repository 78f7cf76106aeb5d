"""A URLconf with a few views that fail on purpose, to test the error shape end to end."""

from django.urls import include, path
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from hokusai_site.errors import ApplicationError
from hokusai_site.pagination import BoundedPageNumberPagination


class EchoApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    max_body_bytes = 1024

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=10)
        count = serializers.IntegerField(min_value=0)
        tags = serializers.ListField(child=serializers.IntegerField(), required=False)

    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response(serializer.validated_data)


class ConflictApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request):
        raise ApplicationError("token_taken", "Token HKS is owned by someone else.", status=409)


class BrokenApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request):
        raise RuntimeError("database password is hunter2")


class NumbersApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request):
        paginator = BoundedPageNumberPagination()
        page = paginator.paginate_queryset(list(range(1000)), request, view=self)
        return paginator.get_paginated_response(page)


class PrivateApi(APIView):
    def get(self, request):
        return Response({})


urlpatterns = [
    path("api/v1/echo", EchoApi.as_view()),
    path("api/v1/conflict", ConflictApi.as_view()),
    path("api/v1/broken", BrokenApi.as_view()),
    path("api/v1/private", PrivateApi.as_view()),
    path("api/v1/numbers", NumbersApi.as_view()),
    path("", include("hokusai_site.urls")),
]

# Django reads the error handlers from the root URLconf, which this module is in these tests.
from hokusai_site.urls import handler400, handler403, handler404, handler500  # noqa: E402, F401
