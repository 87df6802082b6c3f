"""Recurring deliveries and their occurrences."""

from __future__ import annotations

import datetime as dt

from delivery_service import clock
from delivery_service.domain.recurring import RecurringState
from delivery_service.domain.requests import NewRecurring, request_digest
from delivery_service.store.connection import (
    Conn,
    NotFound,
    execute,
    fetch_one,
    fetch_tuples,
    fetch_value,
)
from delivery_service.store.deliveries import insert_target, template_params
from delivery_service.store.records import RecurringDelivery


async def insert(conn: Conn, new: NewRecurring, operator: str, now: dt.datetime) -> int | None:
    """Creates a recurring delivery; None if its request_id is taken already."""
    template = new.template
    target_id = await insert_target(conn, template.segment, template.recipients)
    recurring_id: int | None = await fetch_value(
        conn,
        "insert_recurring",
        **template_params(template, target_id),
        request_id=template.request_id,
        occurrence_interval=new.interval,
        confirm_before_send=new.confirm_before_send,
        next_occurrence_time=new.first_time or now,
        created_by=operator,
        request_digest=request_digest(new),
    )
    return recurring_id


async def by_request(conn: Conn, operator: str, request_id: str) -> tuple[int, bytes] | None:
    """The recurring delivery an operator's request_id created, and that request's digest."""
    rows = await fetch_tuples(
        conn, "recurring_id_by_request", request_id=request_id, operator=operator
    )
    return (rows[0][0], bytes(rows[0][1] or b"")) if rows else None


async def get(conn: Conn, recurring_id: int) -> RecurringDelivery:
    row = await fetch_one(conn, "get_recurring", RecurringDelivery, id=recurring_id)
    if row is None:
        raise NotFound(f"recurring delivery {recurring_id} does not exist")
    return row


async def due(conn: Conn) -> list[tuple[int, bool, str | None]]:
    """The active recurring deliveries whose next occurrence is due, locked (other
    processes skip them): (id, confirm before send, creator)."""
    return [
        (rid, confirm, by)
        for rid, confirm, by in await fetch_tuples(conn, "due_recurring", now=clock.now())
    ]


async def lock_state(conn: Conn, recurring_id: int) -> RecurringState:
    state = await fetch_value(conn, "lock_recurring", id=recurring_id)
    if state is None:
        raise NotFound(f"recurring delivery {recurring_id} does not exist")
    return RecurringState(state)


async def set_state(conn: Conn, recurring_id: int, state: RecurringState, now: dt.datetime) -> None:
    await execute(conn, "set_recurring_state", id=recurring_id, state=str(state), now=now)


async def insert_occurrence(conn: Conn, recurring_id: int) -> int:
    """The next occurrence, a DRAFT delivery of the recurring delivery's template."""
    delivery_id: int = await fetch_value(conn, "insert_occurrence", id=recurring_id)
    return delivery_id


async def advance(conn: Conn, recurring_id: int, now: dt.datetime) -> None:
    """The next occurrence: the first interval boundary after `now`."""
    await execute(conn, "advance_recurring", id=recurring_id, now=now)
