"""The end of the validity's storage: which deliveries are due, and the messages whose
fate it can still change."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from delivery_service import clock
from delivery_service.domain import feedback as fb
from delivery_service.store.connection import Conn, execute, fetch_tuples


async def expiring_deliveries(conn: Conn) -> list[int]:
    """Deliveries whose validity period is over, by the service's clock."""
    rows = await fetch_tuples(conn, "expiring", now=clock.now())
    return [delivery_id for (delivery_id,) in rows]


async def unsettled_messages(
    conn: Conn, delivery_id: int, after: int, limit: int
) -> list[fb.MessageState]:
    """The next messages after `after` whose fate the end of the validity can change,
    locked, in message order."""
    rows = await fetch_tuples(
        conn, "unsettled_messages", delivery_id=delivery_id, after=after, limit=limit
    )
    return [
        fb.MessageState(
            message_id=message_id,
            delivery_id=delivery_id,
            mode=fb.FeedbackMode(mode),
            relayed=relayed,
            outcome=fb.Outcome(outcome),
            bounce_reason=reason,
            opened=opened,
            clicked=clicked,
        )
        for message_id, delivery_id, mode, relayed, outcome, reason, opened, clicked in rows
    ]


async def write_messages(
    conn: Conn, delivery_id: int, messages: Iterable[fb.MessageState], now: dt.datetime
) -> None:
    """Writes the new state of a delivery's messages whose fate changed, and moves them
    in the delivery's counters (held exclusively by the caller)."""
    rows = [m.row() for m in messages]
    if not rows:
        return
    # Opens, clicks and complaints are no fate: the end of the validity leaves them.
    ids, statuses, outcomes, failure_types, failure_reasons, *_ = zip(*rows, strict=True)
    await execute(
        conn,
        "update_messages",
        delivery_id=delivery_id,
        now=now,
        message_ids=list(ids),
        statuses=list(statuses),
        outcomes=list(outcomes),
        failure_types=list(failure_types),
        failure_reasons=list(failure_reasons),
    )


async def set_finished(conn: Conn, delivery_id: int) -> None:
    await execute(conn, "set_finished", id=delivery_id, now=clock.now())
