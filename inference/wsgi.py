"""The prediction server's WSGI application (`manage.py prediction_server`): the whole Django
project, each worker loading MODEL_SERVING_PRELOAD in the background as it starts (granian has
no per-worker hook; importing this module is the worker starting)."""

from hokusai_site.wsgi import application
from inference import services

services.preload_in_background()

__all__ = ["application"]
