"""MLflow's own tables, kept in our database and brought to date by MLflow's alembic scripts.

Django never creates, alters or flushes these tables: `manage.py migrate` calls `upgrade()` after
our migrations, and `manage.py showmigrations` lists `revisions()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy

# The table MLflow's alembic environment records its revision in.
ALEMBIC_VERSION_TABLE = "alembic_version"


@dataclass(frozen=True)
class Revision:
    revision: str
    description: str
    applied: bool


def sqlalchemy_url(database: dict[str, Any]) -> str:
    """The SQLAlchemy URL of a Django database (as in settings.DATABASES), password included."""
    engine = database["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(database['NAME']).resolve()}"
    if engine == "django.db.backends.postgresql":
        url = sqlalchemy.engine.URL.create(
            "postgresql+psycopg2",
            username=database.get("USER") or None,
            password=database.get("PASSWORD") or None,
            host=database.get("HOST") or None,
            port=int(database["PORT"]) if database.get("PORT") else None,
            database=database["NAME"],
        )
        return url.render_as_string(hide_password=False)
    raise ValueError(f"MLflow cannot share a database with engine {engine}")


def upgrade(url: str) -> str:
    """Create MLflow's tables if absent, else run its pending upgrades; return the revision."""
    from mlflow.store.db import utils

    engine = utils.create_sqlalchemy_engine_with_retry(url)
    try:
        # Our own tables are already there, so MLflow's "empty database" test does not apply:
        # its alembic table says whether MLflow's schema exists yet.
        if ALEMBIC_VERSION_TABLE in sqlalchemy.inspect(engine).get_table_names():
            utils._upgrade_db(engine)
        else:
            utils._initialize_tables(engine)
        return utils._get_schema_version(engine)
    finally:
        engine.dispose()


def revisions(url: str) -> list[Revision]:
    """MLflow's schema revisions, oldest first, each marked applied or not."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db import utils

    script = ScriptDirectory.from_config(utils._get_alembic_config(url))
    engine = sqlalchemy.create_engine(url)
    try:
        has_table = ALEMBIC_VERSION_TABLE in sqlalchemy.inspect(engine).get_table_names()
        current = utils._get_schema_version(engine) if has_table else None
    finally:
        engine.dispose()
    applied = (
        {rev.revision for rev in script.iterate_revisions(current, "base")} if current else set()
    )
    return [
        Revision(rev.revision, (rev.doc or "").strip(), rev.revision in applied)
        for rev in reversed(list(script.walk_revisions()))
    ]
