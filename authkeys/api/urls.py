from django.urls import path

from authkeys.api import views

urlpatterns = [
    path("keys", views.KeysApi.as_view(), name="keys"),
    path("keys/<int:key_id>", views.KeyDetailApi.as_view(), name="key-detail"),
    path("keys/<int:key_id>/rotate", views.KeyRotateApi.as_view(), name="key-rotate"),
    path("keys/<int:key_id>/usage", views.KeyUsageApi.as_view(), name="key-usage"),
    path("auth/eth/nonce", views.EthNonceApi.as_view(), name="eth-nonce"),
]
