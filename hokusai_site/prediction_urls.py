"""The prediction server's routes (hokusai_site.prediction_settings): predictions, model
health, its own liveness and metrics; anything else is a 404 in the error shape."""

from django.urls import include, path, re_path
from django_prometheus.exports import ExportToDjangoView

from hokusai_site import views

# The web URLconf's error pages, without importing it (the admin, the proxy, the API docs).
from hokusai_site.errors import handle_400 as handler400
from hokusai_site.errors import handle_403 as handler403
from hokusai_site.errors import handle_404 as handler404
from hokusai_site.errors import handle_500 as handler500

urlpatterns = [
    path("health", views.liveness, name="liveness"),
    path("metrics", ExportToDjangoView, name="metrics"),
    path("api/v1/", include(("inference.api.urls", "api-v1"))),
    re_path(r"", views.route_not_found),
]

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]
