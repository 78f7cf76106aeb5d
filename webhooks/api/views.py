from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from authkeys.permissions import HasScopes
from authkeys.principals import caller_of
from authkeys.scopes import WEBHOOKS_MANAGE
from hokusai_site.pagination import paginated_response
from webhooks import selectors, services
from webhooks.models import EVENT_TYPES, PING, Delivery, WebhookEndpoint

MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 500


def callers_endpoint(request, endpoint_id: int) -> WebhookEndpoint:
    """The endpoint if the caller may see it; another owner's is 404, as if it did not exist."""
    return get_object_or_404(selectors.endpoints_visible_to(caller_of(request)), pk=endpoint_id)


def callers_delivery(request, delivery_id: int) -> Delivery:
    return get_object_or_404(selectors.deliveries_visible_to(caller_of(request)), pk=delivery_id)


def event_types_field(**options) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPES),
        allow_empty=False,
        max_length=20,
        **options,
    )


# Plain serializers, as in the registry API: ModelSerializers rebuild their fields per instance.
class WebhookCircuitOutputSerializer(serializers.Serializer):
    state = serializers.SerializerMethodField()
    consecutive_failures = serializers.IntegerField()
    open_until = serializers.DateTimeField(source="circuit_open_until", allow_null=True)
    failing_since = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(serializers.ChoiceField(choices=selectors.CIRCUIT_STATES))
    def get_state(self, endpoint: WebhookEndpoint) -> str:
        return selectors.circuit_state(endpoint, timezone.now())


class WebhookEndpointOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.CharField()
    description = serializers.CharField()
    event_types = serializers.ListField(child=serializers.CharField())
    is_active = serializers.BooleanField()
    disabled_reason = serializers.CharField()
    owner = serializers.CharField(source="owner_label")
    circuit = WebhookCircuitOutputSerializer(source="*")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


# Only create and rotate answer with these: no other response of the API shows a secret.
class WebhookEndpointCreatedOutputSerializer(WebhookEndpointOutputSerializer):
    secret = serializers.CharField(
        help_text="The signing secret (whsec_…): shown in this response only"
    )


class WebhookEndpointRotatedOutputSerializer(WebhookEndpointCreatedOutputSerializer):
    previous_secret_valid_until = serializers.DateTimeField(
        source="previous_secret_expires_at",
        help_text="Until then deliveries are signed with the previous secret too",
    )


class WebhookAttemptOutputSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    started_at = serializers.DateTimeField()
    duration_ms = serializers.FloatField()
    status_code = serializers.IntegerField(allow_null=True)
    succeeded = serializers.BooleanField()
    error = serializers.CharField()
    response_body = serializers.CharField(help_text="The start of the receiver's answer")


class WebhookDeliveryOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    webhook_id = serializers.CharField(help_text="The webhook-id header: the same on every retry")
    event_id = serializers.UUIDField(source="event.event_id")
    event_type = serializers.CharField(source="event.event_type")
    endpoint_id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Delivery.STATUS_CHOICES)
    attempt_count = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    delivered_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class WebhookDeliveryDetailOutputSerializer(WebhookDeliveryOutputSerializer):
    attempts = WebhookAttemptOutputSerializer(many=True)
    payload = serializers.JSONField(source="event.payload", help_text="The body as sent")


def delivery_detail(request, delivery_id: int) -> dict:
    deliveries = selectors.deliveries_visible_to(caller_of(request)).prefetch_related("attempts")
    return WebhookDeliveryDetailOutputSerializer(get_object_or_404(deliveries, pk=delivery_id)).data


class WebhooksApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"GET": WEBHOOKS_MANAGE, "POST": WEBHOOKS_MANAGE}

    class FilterSerializer(serializers.Serializer):
        # default=None: a missing boolean in a query string would otherwise read as false.
        is_active = serializers.BooleanField(required=False, allow_null=True, default=None)

    class InputSerializer(serializers.Serializer):
        url = serializers.CharField(max_length=MAX_URL_LENGTH)
        event_types = event_types_field()
        description = serializers.CharField(
            max_length=MAX_DESCRIPTION_LENGTH, required=False, allow_blank=True, default=""
        )

    @extend_schema(
        summary="List your webhook endpoints",
        parameters=[FilterSerializer],
        responses=WebhookEndpointOutputSerializer(many=True),
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        endpoints = selectors.endpoint_list(caller=caller_of(request), **filters.validated_data)
        return paginated_response(
            request,
            self,
            endpoints,
            lambda page: WebhookEndpointOutputSerializer(page, many=True).data,
        )

    @extend_schema(
        summary="Create a webhook endpoint (its secret is in this response only)",
        request=InputSerializer,
        responses={201: WebhookEndpointCreatedOutputSerializer},
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint, _ = services.endpoint_create(
            actor=caller_of(request), **serializer.validated_data
        )
        return Response(
            WebhookEndpointCreatedOutputSerializer(endpoint).data, status=status.HTTP_201_CREATED
        )


class WebhookDetailApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"GET": WEBHOOKS_MANAGE, "PATCH": WEBHOOKS_MANAGE, "DELETE": WEBHOOKS_MANAGE}

    class UpdateInputSerializer(serializers.Serializer):
        url = serializers.CharField(max_length=MAX_URL_LENGTH, required=False)
        description = serializers.CharField(
            max_length=MAX_DESCRIPTION_LENGTH, required=False, allow_blank=True
        )
        event_types = event_types_field(required=False)
        is_active = serializers.BooleanField(
            required=False, help_text="false disables the endpoint; true enables it again"
        )

    @extend_schema(
        summary="One of your webhook endpoints", responses=WebhookEndpointOutputSerializer
    )
    def get(self, request, endpoint_id: int):
        return Response(
            WebhookEndpointOutputSerializer(callers_endpoint(request, endpoint_id)).data
        )

    @extend_schema(
        summary="Change an endpoint's URL, description or event types, or turn it off or on",
        request=UpdateInputSerializer,
        responses=WebhookEndpointOutputSerializer,
    )
    def patch(self, request, endpoint_id: int):
        serializer = self.UpdateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = services.endpoint_update(
            actor=caller_of(request),
            endpoint=callers_endpoint(request, endpoint_id),
            **serializer.validated_data,
        )
        return Response(
            WebhookEndpointOutputSerializer(callers_endpoint(request, endpoint.pk)).data
        )

    @extend_schema(
        summary="Delete an endpoint with its deliveries", request=None, responses={204: None}
    )
    def delete(self, request, endpoint_id: int):
        services.endpoint_delete(
            actor=caller_of(request), endpoint=callers_endpoint(request, endpoint_id)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookRotateSecretApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"POST": WEBHOOKS_MANAGE}

    @extend_schema(
        summary="A new signing secret; the old one keeps signing for the grace period",
        request=None,
        responses=WebhookEndpointRotatedOutputSerializer,
    )
    def post(self, request, endpoint_id: int):
        endpoint = callers_endpoint(request, endpoint_id)
        # The service sets endpoint.secret (and the previous one's expiry) in place.
        services.endpoint_rotate_secret(actor=caller_of(request), endpoint=endpoint)
        return Response(WebhookEndpointRotatedOutputSerializer(endpoint).data)


class WebhookTestApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"POST": WEBHOOKS_MANAGE}

    @extend_schema(
        summary="Send a signed `ping` to the endpoint now and report how it answered",
        request=None,
        responses=WebhookDeliveryDetailOutputSerializer,
    )
    def post(self, request, endpoint_id: int):
        ping = services.endpoint_test(
            actor=caller_of(request), endpoint=callers_endpoint(request, endpoint_id)
        )
        return Response(delivery_detail(request, ping.pk))


class WebhookDeliveriesApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"GET": WEBHOOKS_MANAGE}

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Delivery.STATUS_CHOICES, required=False)
        event_type = serializers.ChoiceField(choices=[*EVENT_TYPES, PING], required=False)

    @extend_schema(
        summary="An endpoint's deliveries, newest first",
        parameters=[FilterSerializer],
        responses=WebhookDeliveryOutputSerializer(many=True),
    )
    def get(self, request, endpoint_id: int):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        deliveries = selectors.delivery_list(
            endpoint=callers_endpoint(request, endpoint_id), **filters.validated_data
        )
        return paginated_response(
            request,
            self,
            deliveries,
            lambda page: WebhookDeliveryOutputSerializer(page, many=True).data,
        )


class DeliveryDetailApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"GET": WEBHOOKS_MANAGE}

    @extend_schema(
        summary="One delivery with its attempts and the event it carries",
        responses=WebhookDeliveryDetailOutputSerializer,
    )
    def get(self, request, delivery_id: int):
        return Response(delivery_detail(request, delivery_id))


class DeliveryRedeliverApi(APIView):
    permission_classes = [HasScopes]
    required_scopes = {"POST": WEBHOOKS_MANAGE}

    @extend_schema(
        summary="Send a finished delivery again (same webhook-id, fresh retry schedule)",
        request=None,
        responses={202: WebhookDeliveryOutputSerializer},
    )
    def post(self, request, delivery_id: int):
        delivery = services.delivery_redeliver(
            actor=caller_of(request), delivery_id=callers_delivery(request, delivery_id).pk
        )
        return Response(
            WebhookDeliveryOutputSerializer(delivery).data, status=status.HTTP_202_ACCEPTED
        )
