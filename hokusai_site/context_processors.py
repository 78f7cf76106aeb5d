from django.conf import settings


def environment(request) -> dict[str, str]:
    return {"hokusai_environment": settings.ENVIRONMENT}
