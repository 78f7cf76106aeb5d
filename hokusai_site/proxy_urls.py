"""The MLflow proxy server's routes (hokusai_site.proxy_settings): the proxy's mounts, its own
liveness and metrics; anything else is a 404 in the error shape."""

from django.urls import path, re_path
from django_prometheus.exports import ExportToDjangoView

from hokusai_site import views

# The web URLconf's error pages, without importing it (the admin, the API, the API docs).
from hokusai_site.errors import handle_400 as handler400
from hokusai_site.errors import handle_403 as handler403
from hokusai_site.errors import handle_404 as handler404
from hokusai_site.errors import handle_500 as handler500
from registry import proxy

urlpatterns = [
    path("health", views.liveness, name="liveness"),
    path("metrics", ExportToDjangoView, name="metrics"),
    *proxy.urlpatterns,
    re_path(r"", views.route_not_found),
]

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]
