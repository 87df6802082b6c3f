"""The delivery event feed (docs/events.md): pages after a cursor, filtered by kind, and
a message's timeline."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from delivery_service import clock
from delivery_service.domain import events as ev
from delivery_service.store import deliveries as delivery_store
from delivery_service.store import events as store
from delivery_service.store import logs
from delivery_service.store.connection import Conn, Database, NotFound, OutOfRange
from delivery_service.usecases import retention


async def read(
    db: Database, delivery_id: int | None, after: ev.Position, limit: int
) -> tuple[list[store.FeedEvent], ev.Position, bool]:
    """The next `limit` events the feed holds after `after`, the position after them,
    and whether that is the end of what is committed now."""
    async with db.connection() as conn:
        examined = await store.page(conn, delivery_id, after, limit)
    return examined, *_reached(examined, after, limit)


async def page(
    db: Database,
    delivery_id: int | None,
    kinds: Collection[ev.EventKind],
    after: ev.Position,
    limit: int,
) -> tuple[list[store.FeedEvent], ev.Position, bool]:
    """As `read`, keeping only `kinds` (all if none); NOT_FOUND for an unknown delivery,
    OUT_OF_RANGE for a cursor past the retention. One connection for all of it."""
    async with db.connection() as conn:
        await _start(conn, delivery_id, after, from_end=False)
        examined = await store.page(conn, delivery_id, after, limit)
    return of_kinds(examined, kinds), *_reached(examined, after, limit)


def _reached(
    examined: list[store.FeedEvent], after: ev.Position, limit: int
) -> tuple[ev.Position, bool]:
    """The position after what a read examined, and whether it reached the end."""
    position = examined[-1].position or after if examined else after
    return position, len(examined) < limit


def of_kinds(
    events: list[store.FeedEvent], kinds: Collection[ev.EventKind]
) -> list[store.FeedEvent]:
    return [e for e in events if e.kind in kinds] if kinds else events


async def start(
    db: Database, delivery_id: int | None, after: ev.Position, *, from_end: bool
) -> ev.Position:
    """Where a consumer starts: `after`, or the end of what is committed now; NOT_FOUND
    for an unknown delivery, OUT_OF_RANGE for a cursor past the retention."""
    async with db.connection() as conn:
        return await _start(conn, delivery_id, after, from_end=from_end)


async def _start(
    conn: Conn, delivery_id: int | None, after: ev.Position, *, from_end: bool
) -> ev.Position:
    if delivery_id is not None:
        await delivery_store.get(conn, delivery_id)
    if from_end:
        return await store.end(conn, delivery_id)
    pruned = await store.horizon(conn)
    if after != ev.START and pruned is not None and after < pruned:
        raise OutOfRange(
            "the cursor is older than the event feed's retention: what followed it was "
            "pruned; start again without a cursor (the oldest event kept)"
        )
    return after


# Rows of the feed the retention deletes in one transaction.
PRUNED_PER_ROUND = 10_000


async def prune(db: Database, beyond_validity: dt.timedelta) -> int:
    """The retention round: deletes the feed's oldest rows past their delivery's
    validity period plus `beyond_validity`, at most PRUNED_PER_ROUND; returns how many."""
    async with db.transaction() as conn:
        return await store.prune(conn, clock.now(), beyond_validity, PRUNED_PER_ROUND)


async def prune_event_log(db: Database, beyond_validity: dt.timedelta) -> int:
    """The feedback event log's retention round: deletes the feedback events of finished
    deliveries past their validity plus `beyond_validity` whose feed rows are pruned, at
    most PRUNED_PER_ROUND, one transaction per delivery; returns how many."""
    now = clock.now()
    async with db.connection() as conn:
        due = await store.past_retention(conn, now, beyond_validity, PRUNED_PER_ROUND)

    async def prune(conn: Conn, delivery_id: int, left: int) -> int:
        return await store.prune_event_log(conn, delivery_id, now, left)

    return await retention.prune_deliveries(db, due, prune, PRUNED_PER_ROUND)


async def timeline(db: Database, delivery_id: int, message_id: int) -> list[store.FeedEvent]:
    """A message's events in feed order; NOT_FOUND for an unknown message."""
    async with db.connection() as conn:
        # NOT_FOUND for an unknown delivery (the page), or message.
        found = await logs.page(conn, delivery_id, None, message_id - 1, 1)
        if not found or found[0].message_id != message_id:
            raise NotFound(f"message {message_id} of delivery {delivery_id} does not exist")
        return await store.timeline(conn, delivery_id, message_id)
