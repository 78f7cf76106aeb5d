"""The MLflow proxy server's WSGI application (`manage.py mlflow_proxy_server`): this project with
the proxy server's settings (hokusai_site.proxy_settings)."""

import os

# Assigned, not defaulted: manage.py has already put the web settings in the environment.
os.environ["DJANGO_SETTINGS_MODULE"] = "hokusai_site.proxy_settings"

from hokusai_site.wsgi import application

__all__ = ["application"]
