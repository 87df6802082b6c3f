"""The relay's storage: SENDING deliveries, the lease on each, queued messages, and
batches marked relayed once the MTA acknowledged them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from delivery_service import clock
from delivery_service.domain import feedback as fb
from delivery_service.store import counters
from delivery_service.store.connection import Database, execute, fetch_tuples, fetch_value


async def sending_deliveries(db: Database) -> list[int]:
    async with db.connection() as conn:
        return [delivery_id for (delivery_id,) in await fetch_tuples(conn, "sending_deliveries")]


@asynccontextmanager
async def lease(db: Database, delivery_id: int) -> AsyncIterator[bool]:
    """Holds the right to relay a delivery, if no other process has it.

    A session advisory lock on a connection kept for the lease: it ends by itself if
    this process or its connection dies.
    """
    async with db.connection() as conn:
        locked = bool(await fetch_value(conn, "try_relay_lock", delivery_id=delivery_id))
        try:
            yield locked
        finally:
            if locked and not conn.closed:
                await execute(conn, "relay_unlock", delivery_id=delivery_id)


async def queued_messages(
    db: Database, delivery_id: int, after: int, limit: int
) -> tuple[list[int], list[str]]:
    """The next queued messages after `after`, in message order: (ids, addresses)."""
    async with db.connection() as conn:
        rows = await fetch_tuples(
            conn, "queued_messages", delivery_id=delivery_id, after=after, limit=limit
        )
    return [r[0] for r in rows], [r[1] for r in rows]


async def mark_relayed(
    db: Database, delivery_id: int, mode: fb.FeedbackMode, after: int, upto: int
) -> int:
    """Marks relayed the batch the MTA acknowledged: the queued messages of the delivery
    in (after, upto]. Returns how many this call marked (feedback may have been first)."""
    async with db.transaction() as conn:
        await counters.lock_shared(conn, [delivery_id])
        marked: int = await fetch_value(
            conn,
            "mark_relayed",
            delivery_id=delivery_id,
            after=after,
            upto=upto,
            status=fb.status_of(mode, True, fb.Outcome.NONE),
            shard=counters.any_shard(),
            now=clock.now(),
        )
        if marked:
            deltas = fb.empty_deltas()
            deltas["relayed"] = marked
            await counters.add(conn, {delivery_id: deltas})
    return marked


async def finish_sending(db: Database, delivery_id: int) -> bool:
    """Moves a delivery whose messages are all relayed to SENT."""
    async with db.transaction() as conn:
        return await execute(conn, "set_sent", id=delivery_id) == 1
