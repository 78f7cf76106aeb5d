"""The MLflow proxy server's WSGI application (`manage.py mlflow_proxy_server`): this project with
the proxy server's settings (hokusai_site.proxy_settings), MLflow reads by API key taking the fast
path (registry.proxy_fast_path)."""

import os

# Assigned, not defaulted: manage.py has already put the web settings in the environment.
os.environ["DJANGO_SETTINGS_MODULE"] = "hokusai_site.proxy_settings"

# Django is set up by this import, which comes first: the fast path's modules need it.
from hokusai_site.wsgi import application as django_application
from registry.proxy_fast_path import ProxyServer

application = ProxyServer(django_application)

__all__ = ["application"]
