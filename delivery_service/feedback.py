"""Feedback from the MTA stream, handed to storage one batch per transaction."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from mta.v1 import mta_service_pb2 as mta

from delivery_service import observability, store
from delivery_service.domain import feedback as fb

log = logging.getLogger(__name__)

_KINDS = {int(k) for k in fb.EventKind}
# What the database can hold, checked here so that one bad event from the MTA is
# dropped instead of failing its whole batch again and again: event ids short enough
# for the primary key's index and without NUL (text cannot hold it), times within
# google.protobuf.Timestamp's range (years 1 to 9999).
MAX_EVENT_ID_CHARS = 256
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


class FeedbackIngest:
    def __init__(self, db: store.Store) -> None:
        self.db = db

    async def __call__(self, events: Iterable[mta.FeedbackEvent]) -> None:
        batch = store.EventBatch()
        seen: set[str] = set()
        malformed = repeated = 0
        for e in events:
            event_id = e.event_id
            t = e.event_time
            if (
                e.kind not in _KINDS
                or not 0 < len(event_id) <= MAX_EVENT_ID_CHARS
                or "\x00" in event_id
                or not _MIN_SECONDS <= t.seconds <= _MAX_SECONDS
            ):
                malformed += 1
                continue
            if event_id in seen:  # sent twice in one batch: applied once, counted a duplicate
                repeated += 1
                continue
            seen.add(event_id)
            batch.event_ids.append(event_id)
            batch.message_ids.append(e.message_id)
            batch.delivery_ids.append(e.delivery_id)
            batch.kinds.append(e.kind)
            # A reason this version does not know (a newer MTA's) is kept as unspecified.
            reason = e.reason
            batch.reasons.append(reason if reason in fb.MTA_BOUNCE_REASONS else 0)
            batch.attempts.append(e.attempt)
            batch.link_indexes.append(e.link_index)
            batch.event_micros.append(t.seconds * 1_000_000 + t.nanos // 1000)
        if malformed:
            log.warning("ignored %d malformed feedback events", malformed)
            observability.FEEDBACK_REJECTED.inc(malformed)
        if not batch:
            return
        result = await self._apply(batch)
        observability.BATCH_SIZE.labels("feedback").observe(len(batch))
        observability.FEEDBACK_APPLIED.inc(result.applied)
        observability.FEEDBACK_DEDUPLICATED.inc(result.duplicates + repeated)
        observability.FEEDBACK_UNKNOWN.inc(result.unknown)

    async def _apply(self, batch: store.EventBatch) -> store.IngestResult:
        """Applies a batch; if the database refuses its data, applies each half on its
        own, down to the event it refuses, which is dropped. One bad event must not stop
        the stream: it would be sent again, and refused again, forever."""
        try:
            return await self.db.apply_feedback(batch)
        except store.Rejected as exc:
            if len(batch) == 1:
                log.error("feedback event %r refused, dropped: %s", batch.event_ids[0], exc)
                observability.FEEDBACK_REJECTED.inc()
                return store.IngestResult()
            half = len(batch) // 2
            return await self._apply(batch[:half]) + await self._apply(batch[half:])
