"""Operators: who holds a token, their roles, and their lifecycle."""

from __future__ import annotations

import datetime as dt

from delivery_service import clock
from delivery_service.store.connection import (
    AlreadyExists,
    Conflict,
    Conn,
    NotFound,
    execute,
    fetch_all,
    fetch_one,
    fetch_value,
)
from delivery_service.store.records import Operator, OperatorEntry


async def create(
    conn: Conn,
    name: str,
    token_hash: bytes,
    roles: list[str],
    expire_time: dt.datetime | None = None,
) -> None:
    try:
        await execute(
            conn,
            "create_operator",
            name=name,
            token_hash=token_hash,
            roles=roles,
            expire_time=expire_time,
        )
    except AlreadyExists as exc:
        raise AlreadyExists(exc.constraint, f"an operator named {name!r} already exists") from exc


async def find(conn: Conn, token_hash: bytes) -> Operator | None:
    """The live operator holding a token (not revoked, not expired), by the token's hash."""
    return await fetch_one(conn, "find_operator", Operator, token_hash=token_hash, now=clock.now())


async def get(conn: Conn, name: str) -> OperatorEntry:
    entry = await fetch_one(conn, "get_operator", OperatorEntry, name=name)
    if entry is None:
        raise NotFound(f"operator {name!r} does not exist")
    return entry


async def page(conn: Conn, after: int, limit: int) -> list[OperatorEntry]:
    """A page of operators after the one of id `after`, oldest first."""
    return await fetch_all(conn, "list_operators", OperatorEntry, after=after, limit=limit)


async def revoke(conn: Conn, name: str, now: dt.datetime) -> None:
    if not await execute(conn, "revoke_operator", name=name, now=now):
        raise NotFound(f"operator {name!r} does not exist")


async def rotate(conn: Conn, name: str, token_hash: bytes) -> None:
    if not await execute(conn, "rotate_operator_token", name=name, token_hash=token_hash):
        await get(conn, name)  # NOT_FOUND if there is no such operator
        raise Conflict(f"operator {name!r} is revoked: its token cannot be rotated")


async def admin_exists(conn: Conn) -> bool:
    return await fetch_value(conn, "admin_exists", now=clock.now()) is not None
