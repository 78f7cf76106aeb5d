"""Says clearly whether the PostgreSQL and Redis that the tests need are reachable, and creates
the database named in the URL if it is missing (the tests create their own next to it).

Usage: check_services.py DATABASE_URL REDIS_URL
"""

import sys

import environ
import psycopg2
import redis
from psycopg2 import sql

HINTS = {
    "PostgreSQL": "start it with: pg_ctlcluster --skip-systemctl-redirect "
    "$(ls /etc/postgresql) main start",
    "Redis": 'start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ""',
}


def check_postgres(url: str) -> None:
    config = environ.Env.db_url_config(url)
    # The server's maintenance database is always there to connect to.
    connection = psycopg2.connect(
        dbname="postgres",
        user=config.get("USER") or None,
        password=config.get("PASSWORD") or None,
        host=config.get("HOST") or None,
        port=config.get("PORT") or None,
        connect_timeout=3,
    )
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [config["NAME"]])
        if cursor.fetchone() is None:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(config["NAME"])))
    connection.close()


def check_redis(url: str) -> None:
    redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()


def main() -> int:
    database_url, redis_url = sys.argv[1], sys.argv[2]
    failures = []
    for name, check, url in (
        ("PostgreSQL", check_postgres, database_url),
        ("Redis", check_redis, redis_url),
    ):
        try:
            check(url)
        except Exception as exc:
            failures.append(
                f"{name} is not reachable ({exc.__class__.__name__}: {exc}).\n"
                f"  The tests need it; {HINTS[name]}"
            )
    for failure in failures:
        print(failure.strip(), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
