"""Short reads (Database.read_one: GetKpis', the watches'), on a real database: the pool's
check of a connection, a round trip as long as the read, is skipped for a connection
used whole within the last second while the database answers, and done otherwise."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg_pool import AsyncConnectionPool

from delivery_service.store import connection
from delivery_service.store.connection import Database
from delivery_service.store.records import DeliveryFigures


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """The connections the pool checked."""
    checked: list[object] = []
    check = AsyncConnectionPool.check_connection

    async def counted(conn: connection.Conn) -> None:
        checked.append(conn)
        await check(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counted))
    yield checked


async def test_a_recently_used_connection_is_not_checked_again(
    fresh_db_url: str, checks: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(fresh_db_url, min_size=1, max_size=1)
    await db.open()
    try:
        # Never used: checked. Then used whole a moment ago: not checked.
        for _ in range(20):
            assert await db.read_one("delivery_figures", DeliveryFigures, id=1) is None
        assert len(checks) == 1
        # Other uses are checked every time.
        for _ in range(3):
            async with db.connection() as conn:
                await conn.execute("SELECT 1")
        assert len(checks) == 4
        # A short read's is too once its last use is older than the window, or while the
        # probe finds the database gone.
        monkeypatch.setattr(connection, "CHECKED_BY_USE_SECONDS", 0.0)
        await db.read_one("delivery_figures", DeliveryFigures, id=1)
        assert len(checks) == 5
        monkeypatch.setattr(connection, "CHECKED_BY_USE_SECONDS", 60.0)
        db.reachable = False
        await db.read_one("delivery_figures", DeliveryFigures, id=1)
        assert len(checks) == 6
        db.reachable = True
        await db.read_one("delivery_figures", DeliveryFigures, id=1)
        assert len(checks) == 6
    finally:
        await db.close()
