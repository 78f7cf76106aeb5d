from django.conf import settings
from django.db.models import Q
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from authkeys import selectors, services
from authkeys.models import ApiKey
from authkeys.permissions import CanManageKeys
from authkeys.principals import Caller, caller_of
from authkeys.scopes import ALL_SCOPES, KEYS_MANAGE
from hokusai_site.pagination import paginated_response


def owned_by(caller: Caller) -> Q:
    """Keys belong to a Django user or an Ethereum identity; a caller sees only its owner's."""
    if caller.user_id is not None:
        return Q(owner_user_id=caller.user_id)
    return Q(owner_identity_id=caller.identity_id)


def owner_of(caller: Caller) -> dict:
    if caller.user_id is not None:
        return {"owner_user_id": caller.user_id}
    return {"owner_identity_id": caller.identity_id}


def callers_key(request, key_id: int) -> ApiKey:
    keys = ApiKey.objects.filter(owned_by(caller_of(request))).prefetch_related("secrets")
    return get_object_or_404(keys, pk=key_id)


class KeyOutputSerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(source="current_prefix")
    status = serializers.CharField()
    owner = serializers.CharField(source="owner_label")

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "environment",
            "scopes",
            "rate_limit_per_minute",
            "status",
            "owner",
            "expires_at",
            "created_at",
            "last_used_at",
            "last_used_ip",
        ]


class KeyWithSecretOutputSerializer(KeyOutputSerializer):
    key = serializers.CharField(help_text="The key itself: shown in this response only")

    class Meta(KeyOutputSerializer.Meta):
        fields = [*KeyOutputSerializer.Meta.fields, "key"]


def with_secret(api_key: ApiKey, secret: str) -> dict:
    api_key = ApiKey.objects.prefetch_related("secrets").get(pk=api_key.pk)
    api_key.key = secret
    return KeyWithSecretOutputSerializer(api_key).data


class KeysApi(APIView):
    permission_classes = [CanManageKeys]
    required_scopes = {"GET": KEYS_MANAGE, "POST": KEYS_MANAGE}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=ALL_SCOPES), allow_empty=False, max_length=20
        )
        environment = serializers.ChoiceField(choices=["live", "test"], default="live")
        rate_limit_per_minute = serializers.IntegerField(
            min_value=1, max_value=1_000_000, required=False
        )
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    @extend_schema(summary="List your API keys", responses=KeyOutputSerializer(many=True))
    def get(self, request):
        keys = (
            ApiKey.objects.filter(owned_by(caller_of(request)))
            .prefetch_related("secrets")
            .select_related("owner_user", "owner_identity")
            .order_by("-created_at", "-id")
        )
        return paginated_response(
            request, self, keys, lambda page: KeyOutputSerializer(page, many=True).data
        )

    @extend_schema(
        summary="Create an API key (the key is in this response only)",
        request=InputSerializer,
        responses={201: KeyWithSecretOutputSerializer},
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        caller = caller_of(request)
        api_key, secret = services.api_key_create(
            actor=caller, **owner_of(caller), **serializer.validated_data
        )
        return Response(with_secret(api_key, secret), status=status.HTTP_201_CREATED)


class KeyDetailApi(APIView):
    permission_classes = [CanManageKeys]
    required_scopes = {"GET": KEYS_MANAGE, "PATCH": KEYS_MANAGE, "DELETE": KEYS_MANAGE}

    class UpdateInputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100, required=False)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=ALL_SCOPES),
            allow_empty=False,
            max_length=20,
            required=False,
        )
        rate_limit_per_minute = serializers.IntegerField(
            min_value=1, max_value=1_000_000, required=False
        )
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    @extend_schema(summary="One of your API keys", responses=KeyOutputSerializer)
    def get(self, request, key_id: int):
        return Response(KeyOutputSerializer(callers_key(request, key_id)).data)

    @extend_schema(
        summary="Change a key's name, scopes, rate limit or expiry (effective on the next request)",
        request=UpdateInputSerializer,
        responses=KeyOutputSerializer,
    )
    def patch(self, request, key_id: int):
        serializer = self.UpdateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key = services.api_key_update(
            actor=caller_of(request),
            api_key=callers_key(request, key_id),
            **serializer.validated_data,
        )
        api_key = ApiKey.objects.prefetch_related("secrets").get(pk=api_key.pk)
        return Response(KeyOutputSerializer(api_key).data)

    @extend_schema(summary="Revoke an API key at once", responses=KeyOutputSerializer)
    def delete(self, request, key_id: int):
        api_key = services.api_key_revoke(
            actor=caller_of(request), api_key=callers_key(request, key_id)
        )
        api_key = ApiKey.objects.prefetch_related("secrets").get(pk=api_key.pk)
        return Response(KeyOutputSerializer(api_key).data)


class KeyRotateApi(APIView):
    permission_classes = [CanManageKeys]
    required_scopes = {"POST": KEYS_MANAGE}

    @extend_schema(
        summary="A new secret for the key; the old one works for the grace period",
        request=None,
        responses=KeyWithSecretOutputSerializer,
    )
    def post(self, request, key_id: int):
        api_key, secret = services.api_key_rotate(
            actor=caller_of(request), api_key=callers_key(request, key_id)
        )
        return Response(with_secret(api_key, secret))


class EthNonceApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class OutputSerializer(serializers.Serializer):
        nonce = serializers.CharField()
        expires_at = serializers.DateTimeField()
        domain = serializers.CharField(help_text="The Domain your EIP-4361 message must name")
        uri_prefixes = serializers.ListField(child=serializers.CharField())
        chain_ids = serializers.ListField(child=serializers.IntegerField())

    @extend_schema(
        summary="A single-use nonce for a Sign-In with Ethereum message",
        responses=OutputSerializer,
    )
    def get(self, request):
        nonce, expires_at = services.eth_nonce_issue()
        body = self.OutputSerializer(
            {
                "nonce": nonce,
                "expires_at": expires_at,
                "domain": settings.HOKUSAI_SIWE_DOMAIN,
                "uri_prefixes": settings.HOKUSAI_SIWE_URI_PREFIXES,
                "chain_ids": sorted(settings.HOKUSAI_SIWE_CHAIN_IDS),
            }
        ).data
        return Response(body, headers={"Cache-Control": "no-store"})


class KeyUsageApi(APIView):
    permission_classes = [CanManageKeys]
    required_scopes = {"GET": KEYS_MANAGE}

    class FilterSerializer(serializers.Serializer):
        days = serializers.IntegerField(min_value=1, max_value=366, default=30)

    class OutputSerializer(serializers.Serializer):
        key_id = serializers.IntegerField()
        days = serializers.ListField(child=serializers.DictField())

    @extend_schema(
        summary="Requests made with the key per day (UTC), newest first, up to the last request",
        parameters=[FilterSerializer],
        responses=OutputSerializer,
    )
    def get(self, request, key_id: int):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        api_key = callers_key(request, key_id)
        days = selectors.key_usage(api_key.pk, days=filters.validated_data["days"])
        return Response(
            {
                "key_id": api_key.pk,
                "days": [{"date": day.isoformat(), "requests": n} for day, n in days],
            }
        )
