"""The feedback ingest without a database: what it hands to storage, and how it gets
past an event the database refuses."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.protobuf import timestamp_pb2
from mta.v1 import mta_service_pb2 as mta
from prometheus_client import REGISTRY

from delivery_service.mta.ingest import FeedbackIngest
from delivery_service.store.connection import Cancelled, DiskFull, Rejected, Unavailable
from delivery_service.store.ingest import EventBatch, IngestResult


class RefusingStore:
    """Refuses, as a whole, every batch holding an event whose id starts with 'poison'."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.calls = 0

    async def apply_feedback(self, batch: EventBatch, *, final: bool = True) -> IngestResult:
        self.calls += 1
        if any(event_id.startswith("poison") for event_id in batch.event_ids):
            raise Rejected("value out of range")
        self.applied.extend(batch.event_ids)
        return IngestResult(applied=len(batch))


def event(event_id: str, message_id: int) -> mta.FeedbackEvent:
    return mta.FeedbackEvent(
        event_id=event_id,
        message_id=message_id,
        delivery_id=1,
        kind=mta.EVENT_KIND_DELIVERED,
        attempt=1,
        event_time=timestamp_pb2.Timestamp(seconds=1_764_000_000),
    )


def rejected() -> float:
    return REGISTRY.get_sample_value("delivery_feedback_events_rejected_total") or 0.0


def test_a_refused_event_is_isolated_and_dropped_and_the_rest_applied() -> None:
    db = RefusingStore()
    ingest = FeedbackIngest(db.apply_feedback)
    events = [event(f"e{i}", i) for i in range(1, 1001)]
    events[17] = event("poison-a", 18)
    events[700] = event("poison-b", 701)
    before = rejected()
    asyncio.run(ingest.apply_events(events))
    assert db.applied == [e.event_id for e in events if not e.event_id.startswith("poison")]
    assert rejected() - before == 2
    # Halving finds each refused event in about log2(1000) rounds, not 1,000 calls.
    assert db.calls <= 2 * 2 * 11


def test_repeats_within_a_batch_are_applied_once() -> None:
    db = RefusingStore()
    events = [event("a", 1), event("b", 2), event("a", 1)]
    asyncio.run(FeedbackIngest(db.apply_feedback).apply_events(events))
    assert db.applied == ["a", "b"]


class Received:
    """A batch as the link hands it over, with what happened to it."""

    def __init__(self, *events: mta.FeedbackEvent) -> None:
        self.batch = mta.FeedbackBatch(seq=1, events=events)
        self.received_at = time.monotonic()
        self.live = True
        self.acknowledged = 0
        self.abandoned: list[str] = []
        self.settled = asyncio.Event()  # acknowledged or abandoned

    async def acknowledge(self) -> None:
        self.acknowledged += 1
        self.settled.set()

    def abandon(self, reason: str) -> None:
        self.abandoned.append(reason)
        self.live = False
        self.settled.set()


async def drive(ingest: FeedbackIngest, received: Received) -> None:
    """Runs the ingest's appliers on one batch until it is settled (5 s at most)."""
    appliers = asyncio.create_task(ingest.run())
    try:
        await ingest.receive(received)  # type: ignore[arg-type]
        await asyncio.wait_for(received.settled.wait(), 5)
        await ingest.drain(5)
    finally:
        appliers.cancel()


def test_an_unavailable_database_is_waited_for_then_the_batch_acknowledged() -> None:
    calls = 0

    async def apply(batch: EventBatch, *, final: bool = True) -> IngestResult:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Unavailable("the database is restarting")
        return IngestResult(applied=len(batch))

    received = Received(event("a", 1))
    asyncio.run(drive(FeedbackIngest(apply), received))
    assert (calls, received.acknowledged, received.abandoned) == (3, 1, [])


def test_a_full_disk_holds_the_batch_says_so_once_and_in_health_until_a_write_commits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0
    health: list[bool] = []
    full_while_refused: list[float | None] = []

    async def apply(batch: EventBatch, *, final: bool = True) -> IngestResult:
        nonlocal calls
        calls += 1
        if calls < 4:
            full_while_refused.append(REGISTRY.get_sample_value("delivery_db_disk_full"))
            raise DiskFull('could not extend file "base/5/16400": No space left on device')
        return IngestResult(applied=len(batch))

    async def on_health(healthy: bool) -> None:
        health.append(healthy)

    def refused() -> float:
        sample = "delivery_db_disk_full_errors_total"
        return REGISTRY.get_sample_value(sample, {"flow": "ingest"}) or 0.0

    before = refused()
    received = Received(event("a", 1))
    asyncio.run(drive(FeedbackIngest(apply, on_health=on_health), received))
    # Held, unacknowledged, while refused; acknowledged once, after the write committed.
    assert (calls, received.acknowledged, received.abandoned) == (4, 1, [])
    assert refused() - before == 3
    assert health == [False, True]
    assert full_while_refused[1:] == [1.0, 1.0]
    assert REGISTRY.get_sample_value("delivery_db_disk_full") == 0.0
    said = [r for r in caplog.records if "no room" in r.getMessage()]
    assert len(said) == 1 and not said[0].exc_info, "said once, without a traceback"


def test_a_write_that_still_fits_does_not_end_the_wait_of_another_batch_for_room() -> None:
    refusals = 0
    health: list[tuple[bool, list[str]]] = []
    applied: list[str] = []

    async def apply(batch: EventBatch, *, final: bool = True) -> IngestResult:
        nonlocal refusals
        if "big" in batch.event_ids and refusals < 3:  # needs a new page; "small" fits
            refusals += 1
            raise DiskFull('could not extend file "base/5/16400": No space left on device')
        applied.extend(batch.event_ids)
        return IngestResult(applied=len(batch))

    async def on_health(healthy: bool) -> None:
        health.append((healthy, list(applied)))

    async def run() -> None:
        ingest = FeedbackIngest(apply, concurrency=2, on_health=on_health)
        appliers = asyncio.create_task(ingest.run())
        big, small = Received(event("big", 1)), Received(event("small", 2))
        try:
            await ingest.receive(big)  # type: ignore[arg-type]
            await asyncio.sleep(0.01)  # refused once before the small one comes
            await ingest.receive(small)  # type: ignore[arg-type]
            for r in (big, small):
                await asyncio.wait_for(r.settled.wait(), 5)
        finally:
            appliers.cancel()

    asyncio.run(run())
    # NOT_SERVING from the first refusal until the refused batch itself committed.
    assert health == [(False, []), (True, ["small", "big"])]


def test_any_other_error_is_surfaced_and_the_batch_left_for_the_mta_to_resend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def apply(batch: EventBatch, *, final: bool = True) -> IngestResult:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug")

    before = REGISTRY.get_sample_value("delivery_feedback_batches_failed_total") or 0.0
    received = Received(event("a", 1))
    asyncio.run(drive(FeedbackIngest(apply), received))
    # Tried once, not in a loop; never acknowledged; the stream broken so the MTA resends.
    assert (calls, received.acknowledged, len(received.abandoned)) == (1, 0, 1)
    assert REGISTRY.get_sample_value("delivery_feedback_batches_failed_total") == before + 1
    assert any("RuntimeError: a bug" in (r.exc_text or "") for r in caplog.records)


def test_batches_cancelled_by_a_timeout_are_applied_in_halves_by_message() -> None:
    calls: list[list[int]] = []

    async def apply(batch: EventBatch, *, final: bool = True) -> IngestResult:
        calls.append(batch.message_ids)
        if len(batch) > 3:  # as a statement_timeout cancels a statement with too much work
            raise Cancelled("canceling statement due to statement timeout")
        return IngestResult(applied=len(batch))

    received = [
        Received(event("a", 1), event("b", 2), event("c", 3)),
        Received(event("d", 4), event("d-open", 4), event("e", 5)),
        Received(event("f", 6), event("c-again", 3)),
        Received(),
    ]

    async def run() -> None:
        ingest = FeedbackIngest(apply, concurrency=1)
        for r in received:  # all waiting before the applier takes them, together
            await ingest.receive(r)  # type: ignore[arg-type]
        appliers = asyncio.create_task(ingest.run())
        try:
            for r in received:
                await asyncio.wait_for(r.settled.wait(), 5)
        finally:
            appliers.cancel()

    asyncio.run(run())
    applied = [ids for ids in calls if len(ids) <= 3]
    # Every event once; each message's events in one statement, in their order.
    assert len(calls) > len(applied), "cancelled first"
    assert sorted(m for ids in applied for m in ids) == [1, 2, 3, 3, 4, 4, 5, 6]
    assert all(ids.count(4) in (0, 2) and ids.count(3) in (0, 2) for ids in applied)
    assert [(r.acknowledged, r.abandoned) for r in received] == [(1, [])] * 4
