"""Operators are created straight in the database, like `delivery_service create-operator`."""

from __future__ import annotations

import asyncio
import math

import psycopg
import psycopg.conninfo

from campaign_cli.errors import CliError
from delivery_service import auth, migrations, store
from delivery_service.domain.lifecycle import Role


async def _create(conninfo: str, name: str, roles: list[Role], timeout: float) -> str:
    db = store.Store(conninfo, min_size=1, max_size=1)
    await db.open(timeout=timeout)
    try:
        return await auth.create_operator(db, name, roles)
    finally:
        await db.close()


def create(database_url: str, name: str, roles: list[Role], timeout: float) -> str:
    """Creates the operator (migrating the schema first, if needed); returns its token."""
    try:
        conninfo = psycopg.conninfo.make_conninfo(
            database_url, connect_timeout=str(max(1, math.ceil(timeout)))
        )
    except psycopg.ProgrammingError as exc:
        raise CliError("INVALID_ARGUMENT", f"--database-url: {exc}") from None
    try:
        migrations.apply(conninfo)
        return asyncio.run(_create(conninfo, name, roles, timeout))
    except store.Conflict as exc:
        raise CliError("ALREADY_EXISTS", str(exc)) from None
    # OperationalError includes the pool's timeout when no connection could be opened.
    except (psycopg.OperationalError, store.Unavailable) as exc:
        raise CliError("UNAVAILABLE", f"cannot reach the database: {exc}") from None
