from django.conf import settings
from django.core.management.commands.migrate import Command as DjangoMigrateCommand
from django.db import DEFAULT_DB_ALIAS, connections

from migrations import mlflow_schema


class Command(DjangoMigrateCommand):
    help = (
        "Updates our database schema, then MLflow's own tables in the same database (through "
        "MLflow's schema upgrade), then the embedded cache table when no Redis is configured."
    )

    def handle(self, *args, **options):
        super().handle(*args, **options)
        # Only a full migrate of the default database touches MLflow's schema; --plan, --check
        # and per-app migrations stay Django-only.
        if (
            options["database"] != DEFAULT_DB_ALIAS
            or options["app_label"]
            or options["plan"]
            or options["check_unapplied"]
        ):
            return
        url = mlflow_schema.sqlalchemy_url(connections[DEFAULT_DB_ALIAS].settings_dict)
        if options["verbosity"] >= 1:
            self.stdout.write(self.style.MIGRATE_HEADING("Upgrading MLflow's schema:"))
        revision = mlflow_schema.upgrade(url)
        if options["verbosity"] >= 1:
            self.stdout.write(f"  MLflow schema at revision {revision}")
        if settings.CACHES["default"]["BACKEND"].endswith("DatabaseCache"):
            from django.core.management import call_command

            call_command("createcachetable", database=DEFAULT_DB_ALIAS, verbosity=0)
