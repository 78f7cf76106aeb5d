"""Our tables and MLflow's share one database: `migrate` brings both to date, `showmigrations`
lists both, and Django never alters or flushes MLflow's tables."""

import io
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from django.core.management import call_command
from django.db import connection
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.tracking import MlflowClient

from migrations import mlflow_schema
from tests.conftest import MlflowServer

MLFLOW_TABLES = {"alembic_version", "experiments", "runs", "registered_models", "model_versions"}


def psycopg2_connect(settings_dict: dict, dbname: str):
    db = psycopg2.connect(
        dbname=dbname,
        user=settings_dict["USER"] or None,
        password=settings_dict["PASSWORD"] or None,
        host=settings_dict["HOST"] or None,
        port=settings_dict["PORT"] or None,
    )
    db.autocommit = True
    return db


@pytest.fixture
def scratch_database_url(db) -> Iterator[str]:
    """An empty PostgreSQL database of its own, dropped afterwards."""
    name = f"hokusai_scratch_{uuid.uuid4().hex[:8]}"
    admin = psycopg2_connect(connection.settings_dict, "postgres")
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield mlflow_schema.sqlalchemy_url({**connection.settings_dict, "NAME": name})
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.mark.django_db
def test_migrate_created_mlflow_tables_beside_ours():
    tables = set(connection.introspection.table_names())
    assert tables >= MLFLOW_TABLES
    assert {"django_migrations", "hokusai_site_workerheartbeat"} <= tables
    with connection.cursor() as cursor:
        cursor.execute("SELECT version_num FROM alembic_version")
        assert cursor.fetchone()[0] == _get_latest_schema_revision()


@pytest.mark.django_db
def test_django_does_not_consider_mlflow_tables_its_own():
    django_tables = set(connection.introspection.django_table_names(only_existing=True))
    assert not django_tables & MLFLOW_TABLES


@pytest.mark.django_db
def test_showmigrations_lists_mlflow_revisions_after_ours():
    out = io.StringIO()
    call_command("showmigrations", stdout=out, no_color=True)
    text = out.getvalue()
    assert "hokusai_site\n [X] 0001_initial" in text
    mlflow_section = text.split("mlflow (MLflow's own schema upgrade)\n", 1)[1]
    lines = mlflow_section.rstrip("\n").splitlines()
    assert len(lines) > 40
    assert [line for line in lines if not line.startswith(" [X] ")] == []
    assert lines[-1].startswith(f" [X] {_get_latest_schema_revision()}")


def test_upgrade_brings_an_old_mlflow_schema_to_date(scratch_database_url):
    from alembic import command
    from mlflow.store.db import utils

    # given a database whose MLflow schema stopped at an early revision
    engine = utils.create_sqlalchemy_engine(scratch_database_url)
    utils.InitialBase.metadata.create_all(engine)
    config = utils._get_alembic_config(scratch_database_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "451aebb31d03")
    engine.dispose()
    before = mlflow_schema.revisions(scratch_database_url)
    assert [r.revision for r in before if r.applied] == ["451aebb31d03"]

    # when our migrate step runs
    revision = mlflow_schema.upgrade(scratch_database_url)

    # then every revision is applied
    assert revision == _get_latest_schema_revision()
    assert all(r.applied for r in mlflow_schema.revisions(scratch_database_url))


def test_upgrade_creates_mlflow_schema_in_a_database_that_already_has_tables(
    scratch_database_url,
):
    import sqlalchemy

    engine = sqlalchemy.create_engine(scratch_database_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE our_own (id int)"))
    engine.dispose()
    assert mlflow_schema.upgrade(scratch_database_url) == _get_latest_schema_revision()
    # A second run has nothing to do and changes nothing.
    assert mlflow_schema.upgrade(scratch_database_url) == _get_latest_schema_revision()


@pytest.mark.django_db(transaction=True)
def test_mlflow_rows_survive_djangos_flush(running_mlflow):
    client = MlflowClient(tracking_uri=running_mlflow.url)
    experiment_id = client.create_experiment(f"survivor-{uuid.uuid4().hex[:6]}")

    call_command("flush", interactive=False, verbosity=0)

    assert client.get_experiment(experiment_id).lifecycle_stage == "active"
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM experiments WHERE experiment_id = %s", [experiment_id])
        assert cursor.fetchone()[0] == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_mlflow_server_on_our_database_starts_without_changing_the_schema(tmp_path):
    # An event trigger records every DDL statement run against the test database.
    watcher = psycopg2_connect(connection.settings_dict, connection.settings_dict["NAME"])
    with watcher.cursor() as cursor:
        cursor.execute("CREATE TABLE ddl_seen (tag text, query text)")
        cursor.execute(
            "CREATE FUNCTION record_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ "
            "BEGIN INSERT INTO ddl_seen VALUES (tg_tag, current_query()); END $$"
        )
        cursor.execute(
            "CREATE EVENT TRIGGER watch_ddl ON ddl_command_start EXECUTE FUNCTION record_ddl()"
        )
    server = MlflowServer(
        backend_store_uri=mlflow_schema.sqlalchemy_url(connection.settings_dict),
        artifacts=tmp_path / "artifacts",
        log_path=tmp_path / "server.log",
    )
    try:
        server.start()
        MlflowClient(tracking_uri=server.url).search_experiments()
    finally:
        server.stop()
        with watcher.cursor() as cursor:
            cursor.execute("DROP EVENT TRIGGER watch_ddl")
            cursor.execute("SELECT tag, query FROM ddl_seen")
            seen = cursor.fetchall()
            cursor.execute("DROP TABLE ddl_seen")
            cursor.execute("DROP FUNCTION record_ddl()")
        watcher.close()
    assert seen == []
