"""The prediction server's WSGI application (`manage.py prediction_server`): this project with
the prediction server's settings (hokusai_site.prediction_settings), each worker loading
MODEL_SERVING_PRELOAD in the background as it starts (granian has no per-worker hook; importing
this module is the worker starting)."""

import os

# Assigned, not defaulted: manage.py has already put the web settings in the environment.
os.environ["DJANGO_SETTINGS_MODULE"] = "hokusai_site.prediction_settings"

from hokusai_site.wsgi import application
from inference import services

services.start_worker()

__all__ = ["application"]
