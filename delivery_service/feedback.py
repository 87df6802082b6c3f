"""Feedback from the MTA stream, handed to storage one batch per transaction."""

from __future__ import annotations

import datetime as dt
import logging

from mta.v1 import mta_service_pb2 as mta

from delivery_service import observability, store
from delivery_service.domain import feedback as fb

log = logging.getLogger(__name__)

_KINDS = {int(k) for k in fb.EventKind}


class FeedbackIngest:
    def __init__(self, db: store.Store) -> None:
        self.db = db

    async def __call__(self, events: list[mta.FeedbackEvent]) -> None:
        batch = [
            store.Event(
                event_id=e.event_id,
                message_id=e.message_id,
                delivery_id=e.delivery_id,
                kind=fb.EventKind(e.kind),
                reason=e.reason,
                attempt=e.attempt,
                link_index=e.link_index,
                event_time=e.event_time.ToDatetime(tzinfo=dt.UTC),
            )
            for e in events
            if e.kind in _KINDS and e.event_id
        ]
        if len(batch) < len(events):
            log.warning("ignored %d malformed feedback events", len(events) - len(batch))
        if not batch:
            return
        result = await self.db.apply_feedback(batch)
        observability.BATCH_SIZE.labels("feedback").observe(len(batch))
        observability.FEEDBACK_APPLIED.inc(result.applied)
        observability.FEEDBACK_DEDUPLICATED.inc(result.duplicates)
        observability.FEEDBACK_UNKNOWN.inc(result.unknown)
