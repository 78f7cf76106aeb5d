from django.urls import path

from webhooks.api import views

urlpatterns = [
    path("webhooks", views.WebhooksApi.as_view(), name="webhooks"),
    path("webhooks/<int:endpoint_id>", views.WebhookDetailApi.as_view(), name="webhook-detail"),
    path(
        "webhooks/<int:endpoint_id>/rotate-secret",
        views.WebhookRotateSecretApi.as_view(),
        name="webhook-rotate-secret",
    ),
    path("webhooks/<int:endpoint_id>/test", views.WebhookTestApi.as_view(), name="webhook-test"),
    path(
        "webhooks/<int:endpoint_id>/deliveries",
        views.WebhookDeliveriesApi.as_view(),
        name="webhook-deliveries",
    ),
    path("deliveries/<int:delivery_id>", views.DeliveryDetailApi.as_view(), name="delivery-detail"),
    path(
        "deliveries/<int:delivery_id>/redeliver",
        views.DeliveryRedeliverApi.as_view(),
        name="delivery-redeliver",
    ),
]
