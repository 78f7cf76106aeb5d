from django.contrib import admin
from django.urls import include, path, re_path
from django_prometheus.exports import ExportToDjangoView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from hokusai_site import views
from registry import proxy
from registry.api.urls import compatibility_urlpatterns

admin.site.site_header = "Hokusai administration"
admin.site.site_title = "Hokusai admin"
admin.site.index_title = "Model registry and serving platform"
# Django's index with a webhooks summary on top (a template named admin/index.html would recurse).
admin.site.index_template = "admin/hokusai_index.html"

api_v1 = [
    path("health", views.HealthApi.as_view(), name="health"),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="api-v1:schema"), name="docs"),
    path("", include("authkeys.api.urls")),
    path("", include("inference.api.urls")),
    path("", include("registry.api.urls")),
    path("", include("webhooks.api.urls")),
]

urlpatterns = [
    path("health", views.liveness, name="liveness"),
    path("version", views.VersionApi.as_view(), name="version"),
    path("metrics", ExportToDjangoView, name="metrics"),
    path("api/v1/", include((api_v1, "api-v1"))),
    *compatibility_urlpatterns,
    # The MLflow proxy: /mlflow/ (the UI), /api/mlflow/, /api/2.0/mlflow/, /ajax-api/2.0/, …
    *proxy.urlpatterns,
    path("admin/", admin.site.urls),
    # Unknown API routes answer in the error shape even with DEBUG on (Django's debug 404 page
    # would otherwise replace handler404).
    re_path(r"^(?!admin/|static/|mlflow/)", views.route_not_found),
]

handler400 = "hokusai_site.errors.handle_400"
handler403 = "hokusai_site.errors.handle_403"
handler404 = "hokusai_site.errors.handle_404"
handler500 = "hokusai_site.errors.handle_500"
