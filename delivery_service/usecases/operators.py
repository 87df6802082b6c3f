"""Operators and the audit trail, as the admin drives them; the first admin's bootstrap."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from pathlib import Path

from delivery_service import auth, clock
from delivery_service.domain.roles import Role
from delivery_service.store import audit, operators
from delivery_service.store.connection import Database
from delivery_service.store.records import AuditEvent, OperatorEntry

log = logging.getLogger(__name__)

BOOTSTRAP_ADMIN = "admin"


async def create(
    db: Database, name: str, roles: list[str], expire_time: dt.datetime | None = None
) -> tuple[OperatorEntry, str]:
    """Creates an operator; returns it and its token, which is stored only as a hash."""
    token = auth.new_token()
    async with db.transaction() as conn:
        await operators.create(conn, name, auth.token_hash(token), roles, expire_time)
        return await operators.get(conn, name), token


async def page(db: Database, after: int, limit: int) -> list[OperatorEntry]:
    async with db.connection() as conn:
        return await operators.page(conn, after, limit)


async def revoke(db: Database, name: str) -> OperatorEntry:
    async with db.transaction() as conn:
        await operators.revoke(conn, name, clock.now())
        return await operators.get(conn, name)


async def rotate(db: Database, name: str) -> tuple[OperatorEntry, str]:
    token = auth.new_token()
    async with db.transaction() as conn:
        await operators.rotate(conn, name, auth.token_hash(token))
        return await operators.get(conn, name), token


async def bootstrap(db: Database, token_file: Path) -> bool:
    """The first admin, with no database access needed: if no live operator holds the
    role admin, creates `admin` with the token the file holds, or with a new token that
    is then written to the file (mode 0600). Returns whether it created one. The token
    itself is never logged."""
    async with db.transaction() as conn:
        if await operators.admin_exists(conn):
            return False
        given = await asyncio.to_thread(_read_token, token_file)
        token = given or auth.new_token()
        await operators.create(conn, BOOTSTRAP_ADMIN, auth.token_hash(token), [str(Role.ADMIN)])
    if not given:
        await asyncio.to_thread(_write_token, token_file, token)
    log.warning("no admin operator: created %r; its token is in %s", BOOTSTRAP_ADMIN, token_file)
    return True


def _read_token(path: Path) -> str:
    return path.read_text("utf-8").strip() if path.exists() else ""


def _write_token(path: Path, token: str) -> None:
    """Only the owner may read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")


async def record(db: Database, event: AuditEvent) -> None:
    async with db.transaction() as conn:
        await audit.append(conn, event)


async def audit_page(db: Database, *, before: int, operator: str, limit: int) -> list[AuditEvent]:
    async with db.connection() as conn:
        return await audit.page(conn, before=before, operator=operator, limit=limit)
