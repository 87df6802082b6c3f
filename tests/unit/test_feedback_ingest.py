"""The feedback ingest without a database: what it hands to storage, and how it gets
past an event the database refuses."""

from __future__ import annotations

import asyncio

from google.protobuf import timestamp_pb2
from mta.v1 import mta_service_pb2 as mta
from prometheus_client import REGISTRY

from delivery_service.mta.ingest import FeedbackIngest
from delivery_service.store.connection import Rejected
from delivery_service.store.ingest import EventBatch, IngestResult


class RefusingStore:
    """Refuses, as a whole, every batch holding an event whose id starts with 'poison'."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.calls = 0

    async def apply_feedback(self, batch: EventBatch) -> IngestResult:
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
