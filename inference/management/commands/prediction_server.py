from hokusai_site.granian import GranianCommand


class Command(GranianCommand):
    help = (
        "Runs the prediction server: granian serving this project (inference.wsgi) for "
        "POST /api/v1/models/{id}/predict. Defaults chosen by bench/inference.py on 2 cores "
        "(README, Inference)."
    )
    application = "inference.wsgi:application"
    environment_prefix = "PREDICTION_SERVER"
    default_bind = "127.0.0.1:8002"
    default_workers = 2
    default_threads = 2
