"""Operators are created in the database through the delivery service's admin surface
(`delivery_service.admin`), the one way every tool creates them."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg
import psycopg.conninfo

from campaign_cli.errors import CliError
from delivery_service import admin

# How long the checkout's tools may take to say where `make run`'s database is.
_LOOKUP_TIMEOUT_S = 30


def embedded_database_url(start: Path | None = None) -> str:
    """The URL of the database `make run` uses in the checkout holding `start` (the working
    directory by default), as `python -m tools.run_pair database-url` prints it: the
    service's own database on the embedded PostgreSQL. Empty when no checkout holds it or
    its embedded PostgreSQL is not running.

    Asked of the checkout's tools in a process of their own: tools/ is no part of the
    installed CLI, and they alone know where the embedded server and its database are.
    """
    here = (start or Path.cwd()).resolve()
    root = next((d for d in (here, *here.parents) if (d / "tools" / "run_pair.py").is_file()), None)
    if root is None:
        return ""
    try:
        found = subprocess.run(
            [sys.executable, "-m", "tools.run_pair", "database-url"],
            cwd=root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_LOOKUP_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return found.stdout.strip() if found.returncode == 0 else ""


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
