"""Feedback ingest's storage: a batch of events folded into the sending logs and the
counters by one set-based statement (sql/queries/ingest.sql), each event once."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from delivery_service import clock
from delivery_service.domain import feedback as fb
from delivery_service.store import counters
from delivery_service.store.connection import (
    DATA_ERRORS,
    QUERIES,
    Database,
    Rejected,
    bool_array,
    execute,
    int_array,
    int_table,
    text_array,
)


@dataclass
class EventBatch:
    """Feedback events as the stream hands them to storage: one column per field, in
    arrival order, each event id once."""

    event_ids: list[str] = field(default_factory=list)
    message_ids: list[int] = field(default_factory=list)
    delivery_ids: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    reasons: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    link_indexes: list[int] = field(default_factory=list)
    # Microseconds since the Unix epoch: an int is far cheaper to send than a datetime.
    event_micros: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)

    def __getitem__(self, part: slice) -> EventBatch:
        """The events in a slice of the batch, as a batch."""
        return EventBatch(*(getattr(self, f.name)[part] for f in fields(self)))


@dataclass(frozen=True)
class IngestResult:
    applied: int = 0
    duplicates: int = 0
    unknown: int = 0

    def __add__(self, other: IngestResult) -> IngestResult:
        return IngestResult(
            self.applied + other.applied,
            self.duplicates + other.duplicates,
            self.unknown + other.unknown,
        )


def feedback_rules() -> dict[str, str]:
    """The domain's rules as the lookup tables apply_feedback reads, indexed by event
    kind, or by mode (WITHOUT_EFS, EFS) then outcome: the SQL holds no copy of them."""
    modes = (fb.FeedbackMode.WITHOUT_EFS, fb.FeedbackMode.EFS)
    kinds = sorted(fb.EventKind)
    assert [int(k) for k in kinds] == list(range(1, len(kinds) + 1))
    # A sentinel bounce reason tells "the bounce reason" apart from fixed reasons.
    bounce = -1
    reasons = [
        [None if (r := fb.failure_reason_of(m, o, bounce)) == bounce else r for o in fb.Outcome]
        for m in modes
    ]
    return {
        "outcome_of_kind": int_array(int(fb.outcome_of(k) or fb.Outcome.NONE) for k in kinds),
        "opens": bool_array(k in fb.ENGAGEMENTS for k in kinds),
        "clicks": bool_array(k is fb.EventKind.CLICKED for k in kinds),
        "statuses": int_table([int(fb.status_of(m, True, o)) for o in fb.Outcome] for m in modes),
        "failure_types": int_table(
            [int(fb.failure_type_of(m, o)) for o in fb.Outcome] for m in modes
        ),
        "failure_reasons": int_table(reasons),
    }


_RULES = feedback_rules()


def by_delivery(batch: EventBatch) -> dict[int, EventBatch]:
    """The batch split by delivery, each part in arrival order; no copy for one delivery."""
    first = batch.delivery_ids[0]
    if all(d == first for d in batch.delivery_ids):
        return {first: batch}
    parts: dict[int, EventBatch] = {}
    columns = [f.name for f in fields(EventBatch)]
    for i, delivery_id in enumerate(batch.delivery_ids):
        part = parts.setdefault(delivery_id, EventBatch())
        for name in columns:
            getattr(part, name).append(getattr(batch, name)[i])
    return parts


async def apply_feedback(db: Database, batch: EventBatch) -> IngestResult:
    """Applies a batch of feedback events in one transaction, each event once.

    Events for unknown messages are dropped (counted); an event id already applied is
    skipped; a FINISHED delivery's fates no longer change, though opens and clicks
    still count. One round trip: the counters' shared lock, then for each delivery (in
    id order) the lock of its messages and the set-based statement, pipelined. Raises
    Rejected if the database refuses the data (nothing is then written).
    """
    if not batch:
        return IngestResult()
    parts = sorted(by_delivery(batch).items())
    now = clock.now()
    try:
        async with db.transaction() as conn, conn.pipeline():
            # Not fetched: every statement goes to the server in one round trip.
            await execute(conn, "lock_counters_shared", delivery_ids=int_array(d for d, _ in parts))
            cursors = []
            for delivery_id, part in parts:
                await execute(
                    conn,
                    "lock_feedback_messages",
                    delivery_id=delivery_id,
                    message_ids=int_array(sorted(set(part.message_ids))),
                )
                cursors.append(
                    await conn.execute(
                        QUERIES["apply_feedback"],
                        {
                            **_RULES,
                            "delivery_id": delivery_id,
                            "event_ids": text_array(part.event_ids),
                            "message_ids": int_array(part.message_ids),
                            "kinds": int_array(part.kinds),
                            "reasons": int_array(part.reasons),
                            "attempts": int_array(part.attempts),
                            "link_indexes": int_array(part.link_indexes),
                            "event_micros": int_array(part.event_micros),
                            "shard": counters.any_shard(),
                            "now": now,
                        },
                    )
                )
            rows = [await cur.fetchone() for cur in cursors]
    except DATA_ERRORS as exc:
        raise Rejected(str(exc)) from exc
    known = sum(row[0] for row in rows if row)
    applied = sum(row[1] for row in rows if row)
    return IngestResult(applied=applied, duplicates=known - applied, unknown=len(batch) - known)
