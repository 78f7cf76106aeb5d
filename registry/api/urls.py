from django.urls import path

from registry.api import contributions, views

urlpatterns = [
    path("models", views.ModelsApi.as_view(), name="models"),
    path("models/register", views.ModelRegisterApi.as_view(), name="model-register"),
    path(
        "models/<str:model_id>/contributions",
        contributions.ContributionsApi.as_view(),
        name="model-contributions",
    ),
    path("models/<str:model_id>", views.ModelDetailApi.as_view(), name="model-detail"),
    path("models/<str:model_id>/versions", views.ModelVersionsApi.as_view(), name="model-versions"),
    path("audit-logs", views.AuditLogsApi.as_view(), name="audit-logs"),
]

# The original SDK's route, outside /api/v1.
compatibility_urlpatterns = [
    path(
        "api/models/tokenized-registration-events",
        views.RegistrationEventApi.as_view(),
        name="tokenized-registration-events",
    ),
]
