"""Creation with an optional request_id: a repeat answers with what the first created."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from delivery_service.store.connection import Conn, Database

T = TypeVar("T")


class _RequestRace(Exception):
    """Two requests with one request_id raced, and the other won: ours is rolled back."""


async def create_once(
    db: Database,
    request_id: str | None,
    *,
    find: Callable[[Conn, str], Awaitable[int | None]],
    insert: Callable[[Conn], Awaitable[int | None]],
    read: Callable[[Conn, int], Awaitable[T]],
) -> T:
    """Inserts (`insert` returns the new id, or None when the request_id is taken) and
    reads back what was created; a request_id seen before reads the first one's."""
    if request_id:
        first = await _first(db, request_id, find, read)
        if first is not None:
            return first
    try:
        async with db.transaction() as conn:
            new_id = await insert(conn)
            if new_id is None:
                raise _RequestRace()
            return await read(conn, new_id)
    except _RequestRace:
        assert request_id
        first = await _first(db, request_id, find, read)
        assert first is not None
        return first


async def _first(
    db: Database,
    request_id: str,
    find: Callable[[Conn, str], Awaitable[int | None]],
    read: Callable[[Conn, int], Awaitable[T]],
) -> T | None:
    async with db.connection() as conn:
        first_id = await find(conn, request_id)
        return None if first_id is None else await read(conn, first_id)
