from django.core.management.commands.showmigrations import Command as DjangoShowMigrationsCommand
from django.db import connections

from migrations import mlflow_schema


class Command(DjangoShowMigrationsCommand):
    help = "Shows our migrations and, after them, MLflow's schema revisions in the same database."

    def handle(self, *args, **options):
        super().handle(*args, **options)
        if options["format"] != "list" or options["app_label"]:
            return
        url = mlflow_schema.sqlalchemy_url(connections[options["database"]].settings_dict)
        self.stdout.write(self.style.MIGRATE_LABEL("mlflow") + " (MLflow's own schema upgrade)")
        for revision in mlflow_schema.revisions(url):
            mark = "[X]" if revision.applied else "[ ]"
            self.stdout.write(f" {mark} {revision.revision} {revision.description}")
