"""Creation with an optional request_id, scoped to the operator who sends it: a repeat
of the same request answers with what the first created; the same request_id with a
different request is refused (ALREADY_EXISTS), never answered with another's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from delivery_service.store.connection import AlreadyExists, Conn, Database

T = TypeVar("T")

# (conn, operator, request_id) -> (id created, digest of its request), or None.
Find = Callable[[Conn, str, str], Awaitable[tuple[int, bytes] | None]]


class RequestIdReused(AlreadyExists):
    """The operator used the request_id before, for a different request."""

    def __init__(self) -> None:
        super().__init__("request_id")
        self.args = (
            "request_id: already used by this operator for a different request; "
            "send the same request to get its answer, or use a new request_id",
        )


class _RequestRace(Exception):
    """Two requests with one request_id raced, and the other won: ours is rolled back."""


async def create_once(
    db: Database,
    operator: str,
    request_id: str | None,
    digest: bytes,
    *,
    find: Find,
    insert: Callable[[Conn], Awaitable[int | None]],
    read: Callable[[Conn, int], Awaitable[T]],
) -> T:
    """Inserts (`insert` returns the new id, or None when the request_id is taken) and
    reads back what was created; a request_id the operator used before reads the first
    one's, if it was the same request."""
    if request_id:
        first = await _first(db, operator, request_id, digest, find, read)
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
        first = await _first(db, operator, request_id, digest, find, read)
        assert first is not None
        return first


async def _first(
    db: Database,
    operator: str,
    request_id: str,
    digest: bytes,
    find: Find,
    read: Callable[[Conn, int], Awaitable[T]],
) -> T | None:
    async with db.connection() as conn:
        found = await find(conn, operator, request_id)
        if found is None:
            return None
        first_id, first_digest = found
        # A request recorded before digests were kept is taken to be the same one.
        if first_digest and first_digest != digest:
            raise RequestIdReused()
        return await read(conn, first_id)
