"""gunicorn settings for the Django process (make run, the container image, bench/).

Worker model chosen from bench/health.py on 2 cores; see README "Serving".
Every value can be overridden from the environment.
"""

import os
import shutil
import sys
import tempfile

bind = os.environ.get("HOKUSAI_BIND", "127.0.0.1:8001")
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
if worker_class == "gthread":
    # gunicorn's own, except that a stop does not wait for idle kept-alive connections.
    worker_class = "hokusai_site.gunicorn_workers.ThreadWorker"
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
# Recycle workers now and then so a slow leak cannot grow without bound.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "20000"))
max_requests_jitter = max_requests // 10
# Our middleware writes one log line per request, with its request id; gunicorn's would repeat it.
accesslog = None
errorlog = "-"

# Prometheus counters are per process; the workers share them through files in this directory,
# which must be set before any worker imports prometheus_client.
_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"hokusai-prom-{os.getpid()}")
)


def on_starting(server):
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir, exist_ok=True)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    # Each worker loads MODEL_SERVING_PRELOAD in the background and freezes its start-up objects.
    from inference import services

    services.start_worker()


def worker_exit(server, worker):
    # A worker keeps its last prediction log rows in memory until the next timed write: write
    # them before it exits (a graceful stop, a max_requests recycle). The master calls this too,
    # for a worker already gone; the module was never imported there, so there is nothing to do.
    if "inference.prediction_log" in sys.modules:
        sys.modules["inference.prediction_log"].flush()
