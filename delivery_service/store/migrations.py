"""The schema manager: applies the numbered SQL files of sql/migrations in order, once each.

Like the queries, a migration may name the domain's values (`{EventKind.OPENED}`).
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

from delivery_service.store.connection import Unavailable, render

log = logging.getLogger(__name__)

# Any fixed number works: it only has to be the same in every process of the service.
_LOCK_KEY = 0x6D6967726174


def available() -> list[tuple[str, str]]:
    """The migrations shipped with the package, as (version, sql), in order."""
    folder = resources.files("delivery_service") / "sql" / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), render(f.read_text(encoding="utf-8"))) for f in files]


def apply(conninfo: str, *, upto: str | None = None) -> list[str]:
    """Applies the migrations the database lacks, up to the version `upto` (all by
    default); returns their versions.

    Safe to call from several processes at once: an advisory lock serialises them.
    Raises Unavailable if the database cannot be reached.
    """
    try:
        return _apply(conninfo, upto)
    except psycopg.OperationalError as exc:
        raise Unavailable(str(exc)) from exc


def _apply(conninfo: str, upto: str | None) -> list[str]:
    applied: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, apply_time timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in available():
                if upto is not None and version > upto:
                    break
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                log.info("applied migration %s", version)
                applied.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied
