from hokusai_site.granian import GranianCommand


class Command(GranianCommand):
    help = (
        "Runs the MLflow proxy server: granian serving this project (registry.wsgi) for the "
        "MLflow proxy's routes (/api/2.0/mlflow/…, /api/mlflow/…, /mlflow/…). Defaults chosen by "
        "bench/registry.py on 2 cores (README, Registry and proxy)."
    )
    application = "registry.wsgi:application"
    environment_prefix = "MLFLOW_PROXY_SERVER"
    default_bind = "127.0.0.1:8003"
    default_workers = 2
    default_threads = 8
