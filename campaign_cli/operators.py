"""Operators are created in the database through the delivery service's admin surface
(`delivery_service.admin`), the one way every tool creates them."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import psycopg
import psycopg.conninfo

from campaign_cli.errors import CliError
from delivery_service import admin


def create(database_url: str, name: str, roles: Sequence[str], timeout: float) -> str:
    """Creates the operator (migrating the schema first, if needed); returns its token."""
    try:
        conninfo = psycopg.conninfo.make_conninfo(
            database_url, connect_timeout=str(max(1, math.ceil(timeout)))
        )
    except psycopg.ProgrammingError as exc:
        raise CliError("INVALID_ARGUMENT", f"--database-url: {exc}") from None
    try:
        return asyncio.run(admin.create_operator(conninfo, name, roles, timeout=timeout))
    except admin.OperatorExists:
        raise CliError("ALREADY_EXISTS", f"an operator named {name!r} already exists") from None
    except admin.DatabaseUnavailable as exc:
        # Its message says so already: "cannot reach the database: ...".
        raise CliError("UNAVAILABLE", str(exc)) from None
    except admin.AdminError as exc:
        raise CliError("INVALID_ARGUMENT", str(exc)) from None
