"""Operators: who holds a token, and their roles."""

from __future__ import annotations

from delivery_service.store.connection import AlreadyExists, Conflict, Conn, execute, fetch_one
from delivery_service.store.records import Operator


async def create(conn: Conn, name: str, token_hash: bytes, roles: list[str]) -> None:
    try:
        await execute(conn, "create_operator", name=name, token_hash=token_hash, roles=roles)
    except AlreadyExists as exc:
        raise Conflict(f"an operator named {name!r} already exists") from exc


async def find(conn: Conn, token_hash: bytes) -> Operator | None:
    """The operator holding a token, by the token's hash."""
    return await fetch_one(conn, "find_operator", Operator, token_hash=token_hash)
