"""The feedback event log's retention (docs/events.md), on a real database: a finished
delivery past its validity plus the retention loses its feedback events once its rows of
the event feed are gone, and nothing else: its figures recount the same, and feedback
about it is refused from then on, so that nothing is counted twice without the event ids
that recognised duplicates."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import time

import pytest
from psycopg import sql

from delivery_service.clock import now as clock_now
from delivery_service.domain import feedback as fb
from delivery_service.domain import quarantine as q
from delivery_service.domain.kpis import Kpis
from delivery_service.store import ingest
from delivery_service.store.connection import Conflict, Database
from delivery_service.usecases import addresses, deliveries, events, figures
from grpc_common import clock
from tests.integration.test_event_feed import feed_settled
from tests.integration.test_store_feedback import (
    Event,
    batch_of,
    relayed_delivery,
    timeline,
    until_settled,
)

K = fb.EventKind
# The deliveries' validity is one hour (relayed_delivery): past it plus this, three
# hours later.
BEYOND = dt.timedelta(hours=1)


def figures_of(kpis: Kpis) -> Kpis:
    """The KPIs but the time of their computation."""
    return dataclasses.replace(kpis, stats_time=None)


async def logged(db: Database, delivery_id: int) -> int:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM feedback_events WHERE delivery_id = %s", (delivery_id,)
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_a_finished_delivery_past_its_retention_keeps_its_figures_not_its_events(
    fresh_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(fresh_db_url, max_size=4)
    await db.open()
    try:
        old_id, old_messages = await relayed_delivery(db, fb.FeedbackMode.EFS)
        live_id, live_messages = await relayed_delivery(db, fb.FeedbackMode.EFS)
        old_events = [e for m in old_messages for e in timeline(m, old_id, random.Random(m))]
        live_events = [e for m in live_messages for e in timeline(m, live_id, random.Random(m))]
        await until_settled(db, [old_events, live_events])
        assert await figures.finish(db, old_id)
        final, repaired = await figures.compute_stats(db, old_id)
        assert repaired == 0
        assert final.opened and final.clicked and final.complaints, "the mix engages"
        old_logged, live_logged = await logged(db, old_id), await logged(db, live_id)
        assert old_logged > len(old_messages)

        # Within its retention, nothing goes.
        assert await events.prune_event_log(db, BEYOND) == 0
        real = time.time
        monkeypatch.setattr(clock, "time", lambda: real() + 3 * 3600)
        # Past it, but its rows of the feed are still there: nothing goes yet.
        assert await events.prune_event_log(db, BEYOND) == 0
        assert await logged(db, old_id) == old_logged
        await feed_settled(db)
        while await events.prune(db, BEYOND):
            pass
        # The feed is gone (both deliveries' rows are past theirs); the old delivery's
        # event log goes, the live one's, not finished, stays.
        pruned = 0
        while step := await events.prune_event_log(db, BEYOND):
            pruned += step
        assert pruned == old_logged
        assert await logged(db, old_id) == 0
        assert await logged(db, live_id) == live_logged

        # Its figures recount the same from the sending logs alone.
        again, repaired = await figures.compute_stats(db, old_id)
        assert repaired == 0
        assert figures_of(again) == figures_of(final)

        # Feedback about it from now on, new or a duplicate of an event it had, is refused
        # and changes nothing; the live delivery's goes on as before.
        late = [
            Event(f"late-{m}", m, old_id, K.CLICKED, 0, 0) for m in old_messages[:20]
        ] + old_events[:30]
        result = await ingest.apply_feedback(db, batch_of(late))
        assert result.applied == 0
        assert result.refused == {fb.Refusal.PAST_RETENTION: len(late)}
        assert await logged(db, old_id) == 0
        again, repaired = await figures.compute_stats(db, old_id)
        assert (figures_of(again), repaired) == (figures_of(final), 0)
        result = await ingest.apply_feedback(db, batch_of(live_events[:30]))
        assert (result.applied, result.duplicates, sum(result.refused.values())) == (0, 30, 0)

        # The address histories: while the live delivery may still bring feedback from
        # its start on, nothing goes; once the earliest delivery still taking feedback
        # is later than every event, each address keeps only the last event that changed
        # its entry (where a fold starts again), and a VALID entry, the same as none,
        # goes with all its history. The walk takes a few entries at a time (chunks and
        # rounds of 7 and 21 here), on from where the last round stopped.
        monkeypatch.setattr(addresses, "HISTORY_ENTRIES_PER_CHUNK", 7)
        monkeypatch.setattr(addresses, "HISTORY_ENTRIES_PER_ROUND", 21)
        entries = await table(db, "SELECT * FROM addresses ORDER BY address")
        assert len(entries) > 21
        assert await prune_history(db) == (0, 0, rounds(len(entries)))
        history = await table(db, HISTORY)
        forgettable = {entry[0] for entry in entries if entry[1] == q.AddressStatus.VALID}
        assert 0 < len(forgettable) < len(entries)
        # Each address's last event that changed its entry, by its place in fold order.
        baselines = {address: i for i, (address, _, changed) in enumerate(history) if changed}
        async with db.connection() as conn:
            await conn.execute(
                "UPDATE deliveries SET confirm_time = %s WHERE id = %s",
                (clock_now(), live_id),
            )
        expected = [
            event
            for i, event in enumerate(history)
            if i == baselines.get(event[0]) and event[0] not in forgettable
        ]
        assert len(expected) < len(history)
        assert await prune_history(db) == (
            len(history) - len(expected),
            len(forgettable),
            rounds(len(entries)),
        )
        assert await table(db, HISTORY) == expected
        kept = [entry for entry in entries if entry[0] not in forgettable]
        assert await prune_history(db) == (0, 0, rounds(len(kept)))
        assert await table(db, "SELECT * FROM addresses ORDER BY address") == kept

        # The sending logs and dropped recipients: kept within their retention (a day
        # beyond the validity here); past it, the old delivery's go, a few at a time,
        # its figures final from then on; the live delivery's stay.
        assert await deliveries.prune_sending_logs(db, dt.timedelta(days=1)) == 0
        async with db.connection() as conn:  # as a preparation that dropped some would
            await conn.execute(
                "INSERT INTO dropped_recipients (delivery_id, position, profile_id, email,"
                " reason) SELECT %s, p, 'gone-' || p, '', 'DUPLICATE'"
                " FROM generate_series(1, 10) AS p",
                (old_id,),
            )
        old_rows = await count(db, old_id, "sending_logs") + await count(
            db, old_id, "dropped_recipients"
        )
        assert old_rows == len(old_messages) + 10
        live_logs = await deliveries.sending_logs(db, live_id, None, 0, 1000)
        monkeypatch.setattr(deliveries, "LOGS_PRUNED_PER_ROUND", 7)
        pruned = 0
        while step := await deliveries.prune_sending_logs(db, BEYOND):
            assert step <= 7
            pruned += step
        assert pruned == old_rows
        assert await count(db, old_id, "sending_logs") == 0
        assert await count(db, old_id, "dropped_recipients") == 0
        with pytest.raises(Conflict, match="past their retention"):
            await deliveries.sending_logs(db, old_id, None, 0, 10)
        with pytest.raises(Conflict, match="past their retention"):
            await events.timeline(db, old_id, old_messages[0])
        again, repaired = await figures.compute_stats(db, old_id)
        assert (figures_of(again), repaired) == (figures_of(final), 0)
        assert await deliveries.sending_logs(db, live_id, None, 0, 1000) == live_logs
    finally:
        await db.close()


def rounds(entries: int) -> int:
    """The rounds of a pass over so many entries, 3 chunks of 7 a round: the last chunk
    is the first not full."""
    return (entries // 7 + 1 + 2) // 3


async def prune_history(db: Database) -> tuple[int, int, int]:
    """A whole pass of the address histories' retention, round after round as the
    scheduler makes it: the events and entries it pruned, and in how many rounds."""
    done, rounds, after = addresses.HistoryPruned(), 0, ""
    while True:
        pruned = await addresses.prune_history(db, after)
        done.events += pruned.events
        done.entries += pruned.entries
        rounds += 1
        if pruned.after is None:
            return done.events, done.entries, rounds
        after = pruned.after


HISTORY = (
    "SELECT address, (event_time, delivery_id, event_id)::text, after IS NOT NULL"
    " FROM address_events ORDER BY address, event_time, delivery_id, event_id"
)


async def count(db: Database, delivery_id: int, table: str) -> int:
    """How many rows of a per-delivery table are the delivery's."""
    async with db.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE delivery_id = %s").format(sql.Identifier(table)),
            (delivery_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def table(db: Database, query: str) -> list[tuple[object, ...]]:
    async with db.connection() as conn:
        cur = await conn.execute(query)
        return list(await cur.fetchall())
