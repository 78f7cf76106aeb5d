from django.core.management.base import BaseCommand, CommandError

from hokusai_site.errors import ApplicationError
from registry import services


class Command(BaseCommand):
    help = "Bring versions made in MLflow directly into the registry (reads MLflow only)."

    def handle(self, *args, **options):
        try:
            report = services.registry_sync()
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"models created: {report.models_created}, versions created: "
            f"{report.versions_created}, versions updated: {report.versions_updated}"
        )
