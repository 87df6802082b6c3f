"""Feedback applied by storage alone, on a real database: duplicated, reordered and
concurrent batches end in the same exact figures as one clean pass, and the set-based
SQL folds events exactly as the domain's reference rules (domain.feedback.apply_event)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import random
from typing import NamedTuple

from google.protobuf import timestamp_pb2
from mta.v1 import mta_service_pb2 as mta

from delivery_service.domain import feedback as fb
from delivery_service.domain.kpis import Counters
from delivery_service.domain.lifecycle import ApprovalStep
from delivery_service.domain.requests import NewDelivery, Recipient
from delivery_service.mta.ingest import FeedbackIngest
from delivery_service.store import ingest, relay
from delivery_service.store.connection import Database
from delivery_service.usecases import deliveries, figures

N = 400
K = fb.EventKind


class Event(NamedTuple):
    event_id: str
    message_id: int
    delivery_id: int
    kind: fb.EventKind
    reason: int
    attempt: int


def batch_of(events: list[Event]) -> ingest.EventBatch:
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000)
    return ingest.EventBatch(
        event_ids=[e.event_id for e in events],
        message_ids=[e.message_id for e in events],
        delivery_ids=[e.delivery_id for e in events],
        kinds=[int(e.kind) for e in events],
        reasons=[e.reason for e in events],
        attempts=[e.attempt for e in events],
        link_indexes=[0 for _ in events],
        event_micros=[now for _ in events],
    )


def timeline(message_id: int, delivery_id: int, rng: random.Random) -> list[Event]:
    """What an MTA could report for one message, with stable event ids."""
    kinds = rng.choice(
        [
            [K.DELIVERED, K.OPENED, K.CLICKED],
            [K.HARD_BOUNCE],
            [K.SOFT_BOUNCE, K.SOFT_BOUNCE, K.DELIVERED],
            [K.SOFT_BOUNCE, K.SOFT_BOUNCE, K.EXPIRED],
            [K.DELIVERED],
            [K.DELIVERED, K.COMPLAINT],
            [K.DELIVERED, K.IGNORED],
            # A hard bounce after the delivery report: an asynchronous bounce.
            [K.DELIVERED, K.HARD_BOUNCE],
        ]
    )
    return [
        Event(f"{message_id}:{kind.name}:{attempt}", message_id, delivery_id, kind,
              2 if kind in (K.HARD_BOUNCE, K.SOFT_BOUNCE) else 0, attempt)
        for attempt, kind in enumerate(kinds, start=1)
    ]  # fmt: skip


# What feedback can change on a sending log, as stored.
LOG_COLUMNS = (
    "message_id, status, outcome, failure_type, failure_reason, opened, clicked, complained"
)


async def sending_logs(db: Database, delivery_id: int) -> list[tuple[int, ...]]:
    """Every sending log of a delivery, as stored, in message order."""
    async with db.connection() as conn:
        cur = await conn.execute(
            f"SELECT {LOG_COLUMNS} FROM sending_logs WHERE delivery_id = %s ORDER BY message_id",
            (delivery_id,),
        )
        return await cur.fetchall()


async def counters(db: Database, delivery_id: int) -> Counters:
    return (await figures.current(db, delivery_id)).counters


async def sent_delivery(db: Database, mode: fb.FeedbackMode) -> tuple[int, list[int]]:
    created = await deliveries.create(
        db,
        NewDelivery(
            label="store", subject="s", body="b", links=["https://example.com/a"],
            feedback_mode=mode,
            validity_period=dt.timedelta(hours=1), required_approvals=[ApprovalStep.TARGET],
            segment=None, recipients=[Recipient(None, f"u{i}@example.com") for i in range(N)],
            request_id=None,
        ),
        "test",
    )  # fmt: skip
    await deliveries.prepare(db, created.id)
    await deliveries.approve(db, created.id, ApprovalStep.TARGET)
    await deliveries.confirm(db, created.id, "test")
    message_ids, _ = await relay.queued_messages(db, created.id, 0, N)
    return created.id, message_ids


async def relayed_delivery(db: Database, mode: fb.FeedbackMode) -> tuple[int, list[int]]:
    """A delivery whose every message the MTA acknowledged: its feedback fits the record."""
    delivery_id, message_ids = await sent_delivery(db, mode)
    await relay.mark_relayed(db, delivery_id, mode, 0, message_ids[-1])
    return delivery_id, message_ids


async def until_settled(db: Database, batches: list[list[Event]]) -> None:
    """Applies batches concurrently, as the ingest does, again while some are deferred (an
    open ahead of its delivery report), the way the ingest retries them."""
    while True:
        results = await asyncio.gather(
            *(ingest.apply_feedback(db, batch_of(b), final=False) for b in batches)
        )
        if not any(r.deferred for r in results):
            return


async def test_duplicated_reordered_concurrent_feedback_is_exact(fresh_db_url: str) -> None:
    db = Database(fresh_db_url, max_size=8)
    await db.open()
    try:
        rng = random.Random(3)
        results = {}
        for mode in fb.FeedbackMode:
            clean_id, clean_messages = await relayed_delivery(db, mode)
            noisy_id, noisy_messages = await relayed_delivery(db, mode)
            seed = rng.random()
            clean = [
                e for m in clean_messages for e in timeline(m, clean_id, random.Random(seed + m))
            ]
            noisy = [
                e
                for i, m in enumerate(noisy_messages)
                for e in timeline(m, noisy_id, random.Random(seed + clean_messages[i]))
            ]
            await ingest.apply_feedback(db, batch_of(clean))
            # Every event three times, shuffled, in batches applied by 4 tasks at once.
            shuffled = noisy * 3
            rng.shuffle(shuffled)
            batches = [shuffled[i : i + 97] for i in range(0, len(shuffled), 97)]
            await until_settled(db, batches)
            clean_counters = await counters(db, clean_id)
            noisy_counters = await counters(db, noisy_id)
            _, repaired = await figures.compute_stats(db, noisy_id)
            assert noisy_counters == clean_counters == await counters(db, noisy_id)
            assert repaired == 0
            clean_rows = await sending_logs(db, clean_id)
            noisy_rows = await sending_logs(db, noisy_id)
            # The same fates, message for message (ids differ: two deliveries).
            assert [r[1:] for r in clean_rows] == [r[1:] for r in noisy_rows]
            results[mode] = clean_counters
        assert results[fb.FeedbackMode.EFS] != Counters()
    finally:
        await db.close()


async def test_the_set_based_fold_is_the_domain_rules(fresh_db_url: str) -> None:
    """Random events of every kind and reason, repeated, some about unknown messages, half
    the messages relayed first, in random batches: every sending log and counter ends as
    the domain's reference fold says, event by event in arrival order."""
    db = Database(fresh_db_url, max_size=4)
    await db.open()
    try:
        rng = random.Random(11)
        for mode in fb.FeedbackMode:
            delivery_id, message_ids = await sent_delivery(db, mode)
            relayed = set(message_ids[: N // 2])
            await relay.mark_relayed(db, delivery_id, mode, 0, message_ids[N // 2 - 1])
            model = {
                m: fb.MessageState(m, delivery_id, mode, m in relayed, fb.Outcome.NONE, 0,
                                   False, False)
                for m in message_ids
            }  # fmt: skip
            deltas = fb.empty_deltas()
            deltas["relayed"] = len(relayed)
            events = [
                Event(f"{m}:{i}", m, delivery_id, rng.choice(list(K)), rng.randint(1, 5), i)
                for m in message_ids
                for i in range(rng.randint(0, 5))
            ]
            events += rng.sample(events, len(events) // 3)  # sent again
            events += [Event(f"x{i}", 10**12 + i, delivery_id, K.DELIVERED, 0, 1) for i in range(5)]
            rng.shuffle(events)
            seen: set[str] = set()
            applied = duplicates = unknown = refused = 0
            for start in range(0, len(events), 150):
                part = events[start : start + 150]
                result = await ingest.apply_feedback(db, batch_of(part))
                applied += result.applied
                duplicates += result.duplicates
                unknown += result.unknown
                refused += sum(result.refused.values())
                delivered = {e.message_id for e in part if e.kind is K.DELIVERED}
                # Judged as a set, against the messages as they were before the batch.
                believed = [
                    e
                    for e in part
                    if e.message_id in model
                    and fb.refusal(model[e.message_id], e.kind, 0, 1, e.message_id in delivered)
                    is None
                ]
                for e in believed:
                    # A refused event is not logged: a later copy may yet be believed.
                    if e.event_id not in seen:
                        seen.add(e.event_id)
                        fb.apply_event(model[e.message_id], e.kind, e.reason, deltas)
            assert (applied, unknown) == (len(seen), 5)
            assert refused > 0, "some events about messages not relayed, or not delivered"
            assert duplicates == len(events) - 5 - len(seen) - refused
            assert await sending_logs(db, delivery_id) == [model[m].row() for m in message_ids]
            assert await counters(db, delivery_id) == Counters(**deltas)
    finally:
        await db.close()


async def test_after_the_validity_only_opens_and_clicks_count(fresh_db_url: str) -> None:
    """Reports that arrive after FINISHED are logged, but change no fate; an open or a
    click still counts."""
    db = Database(fresh_db_url, max_size=4)
    await db.open()
    try:
        delivery_id, message_ids = await sent_delivery(db, fb.FeedbackMode.EFS)
        await relay.mark_relayed(db, delivery_id, fb.FeedbackMode.EFS, 0, message_ids[N // 2 - 1])
        reported = [Event(f"{m}:d0", m, delivery_id, K.DELIVERED, 0, 1) for m in message_ids[:25]]
        await ingest.apply_feedback(db, batch_of(reported))
        assert await figures.finish(db, delivery_id)
        before = await sending_logs(db, delivery_id)
        counted = await counters(db, delivery_id)
        late = [
            *(Event(f"{m}:h", m, delivery_id, K.HARD_BOUNCE, 1, 1) for m in message_ids[:10]),
            *(Event(f"{m}:d", m, delivery_id, K.DELIVERED, 0, 1) for m in message_ids[:10]),
            *(Event(f"{m}:o", m, delivery_id, K.OPENED, 0, 1) for m in message_ids[10:20]),
            *(Event(f"{m}:c", m, delivery_id, K.CLICKED, 0, 1) for m in message_ids[20:25]),
        ]
        result = await ingest.apply_feedback(db, batch_of(late))
        assert (result.applied, result.duplicates, result.unknown) == (len(late), 0, 0)
        after = await sending_logs(db, delivery_id)
        # message_id, status, outcome, failure_type, failure_reason: unchanged.
        assert [r[:5] for r in after] == [r[:5] for r in before]
        assert [r[0] for r in after if r[5]] == message_ids[10:25]
        assert [r[0] for r in after if r[6]] == message_ids[20:25]
        now = await counters(db, delivery_id)
        assert now == dataclasses.replace(counted, opened=15, clicked=5)
    finally:
        await db.close()


async def test_malformed_events_are_dropped_not_retried_forever(fresh_db_url: str) -> None:
    """What the database could not hold is dropped by the ingest, so the rest of the
    batch commits: a NUL or an overlong event id, a time out of Timestamp's range, an
    unknown kind. An unknown bounce reason is kept as unspecified."""
    db = Database(fresh_db_url, max_size=4)
    await db.open()
    try:
        delivery_id, (m1, m2, m3, *_) = await relayed_delivery(db, fb.FeedbackMode.EFS)

        now = int(dt.datetime.now(dt.UTC).timestamp())

        def event(
            event_id: str, message_id: int, kind: int, reason: int = 0, seconds: int = now
        ) -> mta.FeedbackEvent:
            return mta.FeedbackEvent(
                event_id=event_id, message_id=message_id, delivery_id=delivery_id,
                kind=mta.EventKind.ValueType(kind), reason=mta.BounceReason.ValueType(reason),
                attempt=1, event_time=timestamp_pb2.Timestamp(seconds=seconds),
            )  # fmt: skip

        await FeedbackIngest(functools.partial(ingest.apply_feedback, db)).apply_events(
            [
                event("good", m1, K.DELIVERED),
                event("nul\x00", m2, K.HARD_BOUNCE, 1),
                event("x" * 257, m2, K.HARD_BOUNCE, 1),
                event("late", m2, K.HARD_BOUNCE, 1, seconds=10**12),
                event("kind", m2, 9),
                event("reason", m3, K.HARD_BOUNCE, 40_000),
            ]
        )
        rows = {r[0]: r for r in await sending_logs(db, delivery_id)}
        assert rows[m1][1] == fb.Status.SENT
        assert rows[m2][2] == fb.Outcome.NONE
        assert (rows[m3][2], rows[m3][4]) == (fb.Outcome.HARD_BOUNCED, 0)
    finally:
        await db.close()
