"""The delivery event feed (docs/events.md) from storage alone, on a real database:
every committed change once, and no event ever behind a position already served, with
writers whose transactions commit late."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest

from delivery_service.domain import events as ev
from delivery_service.domain import feedback as fb
from delivery_service.store import events, relay
from delivery_service.store.connection import Database, OutOfRange
from delivery_service.usecases import events as usecases_events
from delivery_service.usecases import figures
from tests.integration.test_store_feedback import (
    Event,
    relayed_delivery,
    sent_delivery,
    timeline,
    until_settled,
)
from tests.support.processes import await_until

K = fb.EventKind


async def whole_feed(
    db: Database, delivery_id: int | None = None, size: int = 97
) -> list[events.FeedEvent]:
    """The feed from its start to its end, in pages: a page shorter than asked is the
    end."""
    await feed_settled(db)
    served: list[events.FeedEvent] = []
    position = ev.START
    async with db.connection() as conn:
        while True:
            page = await events.page(conn, delivery_id, position, size)
            served += page
            if len(page) < size:
                return served
            position = page[-1].position or position


async def feed_settled(db: Database) -> None:
    """Waits until every feed row is below the oldest transaction in flight: the feed
    serves no row before, and on a shared server (the suite runs in several processes)
    another database's transaction holds that horizon back for a while."""

    async def settled() -> bool:
        async with db.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(max(xid) < pg_snapshot_xmin(pg_current_snapshot()), true)"
                " FROM delivery_feed"
            )
            row = await cur.fetchone()
            return bool(row and row[0])

    await await_until(settled, 30, message="a transaction in flight holds the feed back")


async def expected_ids(db: Database, delivery_id: int, relayed: list[int]) -> set[str]:
    """What the feed must hold, from the tables themselves: each message relayed, each
    feedback event logged, each message the end of the validity expired."""
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT 'feedback:' || delivery_id || ':' || event_id"
            " FROM feedback_events WHERE delivery_id = %(d)s"
            " UNION ALL SELECT 'expired:' || s.message_id FROM sending_logs s"
            " WHERE s.delivery_id = %(d)s AND s.outcome = %(expired)s AND NOT EXISTS ("
            "   SELECT FROM feedback_events f WHERE f.delivery_id = %(d)s"
            "      AND f.message_id = s.message_id AND f.kind = %(mta_expired)s)",
            {"d": delivery_id, "expired": int(fb.Outcome.EXPIRED), "mta_expired": int(K.EXPIRED)},
        )
        logged = {i for (i,) in await cur.fetchall()}
    return logged | {f"relayed:{m}" for m in relayed}


async def test_every_committed_change_is_in_the_feed_once(fresh_db_url: str) -> None:
    db = Database(fresh_db_url, max_size=8)
    await db.open()
    try:
        rng = random.Random(5)
        delivery_id, message_ids = await relayed_delivery(db, fb.FeedbackMode.EFS)
        reported = [
            e for m in message_ids[:300] for e in timeline(m, delivery_id, random.Random(m))
        ]
        noisy = reported * 2
        rng.shuffle(noisy)
        await until_settled(db, [noisy[i : i + 61] for i in range(0, len(noisy), 61)])
        # The rest are never reported: the end of the validity expires them (EFS).
        assert await figures.finish(db, delivery_id)
        feed = await whole_feed(db, delivery_id)
        ids = [e.event_id for e in feed]
        assert len(ids) == len(set(ids))
        assert set(ids) == await expected_ids(db, delivery_id, message_ids)
        assert sum(e.kind == ev.EventKind.RELAYED for e in feed) == len(message_ids)
        assert sum(e.kind == ev.EventKind.EXPIRED for e in feed) >= 100
        # What each kind carries.
        by_id = {e.event_id: e for e in feed}
        for event in reported:
            got = by_id[f"feedback:{delivery_id}:{event.event_id}"]
            assert (got.kind, got.message_id, got.attempt, got.reason) == (
                ev.kind_of_feedback(event.kind),
                event.message_id,
                event.attempt,
                event.reason,
            )
            assert got.address == f"u{message_ids.index(event.message_id)}@example.com"
        # Positions only grow; the every-delivery feed holds the same events; pages of
        # any size end at the same place (a row can hold hundreds of items, or one).
        positions = [e.position for e in feed if e.position is not None]
        assert len(positions) == len(feed) and positions == sorted(positions)
        assert [e.event_id for e in await whole_feed(db)] == ids
        for size in (1, 2, 3, 500):
            assert [e.event_id for e in await whole_feed(db, delivery_id, size)] == ids
    finally:
        await db.close()


async def test_a_late_commit_never_lands_behind_a_served_position(fresh_db_url: str) -> None:
    """Four writers (three feedback appliers and the relay), a third of whose
    transactions wait before committing, while a consumer reads the feed without pause:
    what the consumer got, page after page, is exactly the whole feed read at the end,
    in the same order: no event appeared behind a position it had been given."""
    db = Database(fresh_db_url, max_size=12)
    await db.open()
    rng = random.Random(8)

    async def sometimes_late() -> None:
        if rng.random() < 0.35:
            await asyncio.sleep(rng.uniform(0.02, 0.25))

    try:
        reported_id, reported_messages = await relayed_delivery(db, fb.FeedbackMode.EFS)
        relayed_id, relayed_messages = await sent_delivery(db, fb.FeedbackMode.WITHOUT_EFS)
        # Each message's events in the order the MTA reports them, by one applier.
        parts = [
            [e for m in reported_messages[i::3] for e in timeline(m, reported_id, random.Random(m))]
            for i in range(3)
        ]
        db.before_commit = sometimes_late

        async def applier(part: list[Event]) -> None:
            for start in range(0, len(part), 23):
                await until_settled(db, [part[start : start + 23]])

        async def relayer() -> None:
            after = 0
            for upto in relayed_messages[9::10]:
                await relay.mark_relayed(db, relayed_id, fb.FeedbackMode.WITHOUT_EFS, after, upto)
                after = upto

        writers = asyncio.ensure_future(asyncio.gather(*(applier(p) for p in parts), relayer()))
        served: list[events.FeedEvent] = []
        position = ev.START
        pages = 0
        async with db.connection() as conn:
            while True:
                # Taken before the read: once the writers are done and every row is below
                # the oldest transaction in flight (another test's may hold it back), an
                # empty page is the end.
                finished = writers.done()
                if finished:
                    await feed_settled(db)
                page = await events.page(conn, None, position, 50)
                served += page
                position = (page[-1].position if page else None) or position
                pages += 1
                if finished and not page:
                    break
                if not page:
                    await asyncio.sleep(0.005)
        await writers
        db.before_commit = None
        whole = await whole_feed(db)
        assert [e.event_id for e in served] == [e.event_id for e in whole]
        events_reported = sum(len(p) for p in parts)
        assert len(whole) == events_reported + len(reported_messages) + len(relayed_messages)
        assert pages > 20, "the consumer read while the writers wrote"
    finally:
        await db.close()


async def test_the_retention_prunes_in_feed_order_and_older_cursors_are_out_of_range(
    fresh_db_url: str,
) -> None:
    """Rows go once their delivery's validity period plus the margin is over, oldest
    first and only as a prefix of the feed: a row still kept keeps the rows after it. A
    cursor before the last row pruned is OUT_OF_RANGE; at it, or without one, the feed
    goes on from the oldest row kept."""
    db = Database(fresh_db_url, max_size=4)
    await db.open()
    try:
        short_id, short_messages = await relayed_delivery(db, fb.FeedbackMode.EFS)
        long_id, _ = await relayed_delivery(db, fb.FeedbackMode.EFS)
        reports = [e for m in short_messages[:50] for e in timeline(m, short_id, random.Random(m))]
        await until_settled(db, [reports])
        async with db.connection() as conn:
            await conn.execute(
                "UPDATE deliveries SET validity_period = interval '10 days' WHERE id = %s",
                (long_id,),
            )
        before = await whole_feed(db)
        sizes = [
            sum(1 for e in before if e.position and e.position[:2] == row)
            for row in dict.fromkeys(e.position[:2] for e in before if e.position)
        ]
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        await feed_settled(db)
        async with db.transaction() as conn:
            # The first row (the short delivery's relay) is past its retention; the long
            # delivery's relay is not, so the short one's feedback after it stays too.
            assert await events.prune(conn, later, dt.timedelta(0), 1000) == 1
        kept = await whole_feed(db)
        assert [e.event_id for e in kept] == [e.event_id for e in before[sizes[0] :]]
        last_pruned = before[sizes[0] - 1].position
        assert last_pruned is not None
        assert await usecases_events.start(db, None, last_pruned, from_end=False) == last_pruned
        assert await usecases_events.start(db, None, ev.START, from_end=False) == ev.START
        with pytest.raises(OutOfRange):
            await usecases_events.start(db, None, before[0].position or ev.START, from_end=False)
        # Once the long delivery's rows are past theirs too, everything goes.
        async with db.connection() as conn:
            await conn.execute(
                "UPDATE deliveries SET validity_period = interval '1 hour' WHERE id = %s",
                (long_id,),
            )
        await feed_settled(db)
        async with db.transaction() as conn:
            assert await events.prune(conn, later, dt.timedelta(0), 1000) == len(sizes) - 1
        assert await whole_feed(db) == []
        with pytest.raises(OutOfRange):
            await usecases_events.start(db, short_id, last_pruned, from_end=False)
    finally:
        await db.close()
