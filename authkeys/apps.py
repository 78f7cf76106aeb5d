from django.apps import AppConfig


class AuthkeysConfig(AppConfig):
    name = "authkeys"
    verbose_name = "Access"

    def ready(self) -> None:
        # Imported for their side effects: signal receivers and the OpenAPI auth description.
        from authkeys import schema, signals  # noqa: F401
