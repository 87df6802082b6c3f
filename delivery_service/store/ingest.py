"""Feedback ingest's storage: a batch of events folded into the sending logs and the
counters by one set-based statement (sql/queries/ingest.sql), each event once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from delivery_service import clock
from delivery_service.domain import feedback as fb
from delivery_service.domain import quarantine as q
from delivery_service.store import addresses, counters
from delivery_service.store.connection import (
    DATA_ERRORS,
    QUERIES,
    Database,
    Rejected,
    bool_array,
    bool_table,
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
    # The receiving server's reply, for bounces and ignored replies.
    smtp_codes: list[int] = field(default_factory=list)
    smtp_statuses: list[str] = field(default_factory=list)
    smtp_texts: list[str] = field(default_factory=list)

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
    # Events that do not fit the relay record yet, and may later: not applied, their
    # batch to be tried again before it is acknowledged.
    deferred: int = 0
    # Events not believed, by reason (fb.Refusal): never applied.
    refused: Counter[str] = field(default_factory=Counter)

    def __add__(self, other: IngestResult) -> IngestResult:
        return IngestResult(
            self.applied + other.applied,
            self.duplicates + other.duplicates,
            self.unknown + other.unknown,
            self.deferred + other.deferred,
            self.refused + other.refused,
        )


def feedback_rules() -> dict[str, str | int]:
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
        "after_delivery": bool_array(k in fb.AFTER_DELIVERY for k in kinds),
        "address_kinds": bool_array(q.signal_of(k) is not None for k in kinds),
        "report_kinds": bool_array(q.signal_of(k) is q.Signal.DELIVERED for k in kinds),
        "clicks": bool_array(k is fb.EventKind.CLICKED for k in kinds),
        "statuses": int_table([int(fb.status_of(m, True, o)) for o in fb.Outcome] for m in modes),
        "failure_types": int_table(
            [int(fb.failure_type_of(m, o)) for o in fb.Outcome] for m in modes
        ),
        "failure_reasons": int_table(reasons),
        "engageable": bool_table([fb.engageable(m, o) for o in fb.Outcome] for m in modes),
        "relay_margin": -fb.EVENT_TIME_MARGIN_SECONDS * 1_000_000,
        "future_margin": fb.EVENT_TIME_MARGIN_SECONDS * 1_000_000,
        "max_events": fb.MAX_EVENTS_PER_MESSAGE,
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


async def apply_feedback(
    db: Database, batch: EventBatch, *, final: bool = True, rules: q.Rules = q.DEFAULT_RULES
) -> IngestResult:
    """Applies a batch of feedback events in one transaction, each event once.

    Events for unknown messages are dropped (counted); an event id already applied is
    skipped; an event that does not fit the relay record is not applied (counted by
    reason; unless `final`, those that time may mend are counted as deferred instead);
    a FINISHED delivery's fates no longer change, though opens and clicks still count.
    One round trip: the counters' shared lock, then for each delivery (in id order) the
    lock of its messages and the set-based statement, pipelined; then the new events'
    addresses are folded into the address table (`rules`) in the same transaction.
    Raises Rejected if the database refuses the data (nothing is then written).
    """
    if not batch:
        return IngestResult()
    parts = sorted(by_delivery(batch).items())
    now = clock.now()
    latest_micros = int(clock.latest().timestamp() * 1_000_000)
    try:
        async with db.transaction() as conn, conn.pipeline():
            # Not fetched: every statement goes to the server in one round trip.
            await execute(conn, "plan_by_key")
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
                            "smtp_codes": int_array(part.smtp_codes),
                            "smtp_statuses": text_array(part.smtp_statuses),
                            "smtp_texts": text_array(part.smtp_texts),
                            "delivered_in_batch": bool_array(_delivered_in_batch(part)),
                            "in_batch": int_array(_in_batch(part)),
                            "shard": counters.any_shard(),
                            "now": now,
                            # Not in the future: of the latest time read, which a
                            # backward step of the clock does not take back.
                            "now_micros": latest_micros,
                        },
                    )
                )
            rows = [await cur.fetchone() for cur in cursors]
            micros = int(now.timestamp() * 1_000_000)
            await addresses.fold(
                conn,
                (
                    event
                    for (delivery_id, _), row in zip(parts, rows, strict=True)
                    if row
                    for event in address_events(delivery_id, row[3:12])
                ),
                rules,
                micros,
                [
                    addresses.DeliveryReports(delivery_id, *row[13:])
                    for (delivery_id, _), row in zip(parts, rows, strict=True)
                    if row and row[12]
                ],
            )
    except DATA_ERRORS as exc:
        raise Rejected(str(exc)) from exc
    known = sum(row[0] for row in rows if row)
    applied = sum(row[1] for row in rows if row)
    reasons = Counter(reason for row in rows if row for reason in row[2])
    deferred = 0 if final else sum(reasons.pop(r, 0) for r in fb.DEFERRABLE)
    refused = sum(reasons.values()) + deferred
    return IngestResult(
        applied=applied,
        duplicates=known - applied - refused,
        unknown=len(batch) - known,
        deferred=deferred,
        refused=reasons,
    )


_DELIVERED = int(fb.EventKind.DELIVERED)
_FAILURE_TYPE = {q.Signal.HARD_ERROR: fb.FailureType.HARD, q.Signal.SOFT_ERROR: fb.FailureType.SOFT}
# By kind's value, for the kinds that say something of the address: (signal, failure type).
_ADDRESS_SIGNALS = {
    int(kind): (signal, int(_FAILURE_TYPE.get(signal, fb.FailureType.NONE)))
    for kind in fb.EventKind
    if (signal := q.signal_of(kind)) is not None
}


def address_events(
    delivery_id: int, columns: tuple[list[Any], ...]
) -> Iterator[tuple[str, q.AddressEvent]]:
    """The (address, event) pairs of the new events apply_feedback returns of a delivery
    (only events that say something of their address)."""
    for email, event_id, message_id, kind, reason, micros, code, status, text in zip(
        *columns, strict=True
    ):
        signal, failure_type = _ADDRESS_SIGNALS[kind]
        yield email.lower(), q.AddressEvent(
            micros, delivery_id, event_id, signal, message_id, failure_type, reason, code,
            status, text,
        )  # fmt: skip


def _in_batch(part: EventBatch) -> list[int]:
    """For each event, how many events of its message the batch holds: the bound of
    events per message needs counting only where these could pass it."""
    counts = Counter(part.message_ids)
    return [counts[m] for m in part.message_ids]


def _delivered_in_batch(part: EventBatch) -> list[bool]:
    """For each event, whether the batch also reports its message delivered: an open
    may come in the same batch as the delivery report it follows."""
    delivered = {m for m, k in zip(part.message_ids, part.kinds, strict=True) if k == _DELIVERED}
    return [m in delivered for m in part.message_ids]
