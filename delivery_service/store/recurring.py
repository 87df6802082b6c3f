"""Recurring deliveries and their occurrences."""

from __future__ import annotations

import datetime as dt

from delivery_service.domain.requests import NewRecurring
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


async def insert(conn: Conn, new: NewRecurring, now: dt.datetime) -> int | None:
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
    )
    return recurring_id


async def id_by_request(conn: Conn, request_id: str) -> int | None:
    recurring_id: int | None = await fetch_value(
        conn, "recurring_id_by_request", request_id=request_id
    )
    return recurring_id


async def get(conn: Conn, recurring_id: int) -> RecurringDelivery:
    row = await fetch_one(conn, "get_recurring", RecurringDelivery, id=recurring_id)
    if row is None:
        raise NotFound(f"recurring delivery {recurring_id} does not exist")
    return row


async def due(conn: Conn) -> list[tuple[int, bool]]:
    """The recurring deliveries whose next occurrence is due, locked (other processes
    skip them): (id, confirm before send)."""
    return [(rid, confirm) for rid, confirm in await fetch_tuples(conn, "due_recurring")]


async def insert_occurrence(conn: Conn, recurring_id: int) -> int:
    """The next occurrence, a DRAFT delivery of the recurring delivery's template."""
    delivery_id: int = await fetch_value(conn, "insert_occurrence", id=recurring_id)
    return delivery_id


async def advance(conn: Conn, recurring_id: int, now: dt.datetime) -> None:
    """The next occurrence: the first interval boundary after `now`."""
    await execute(conn, "advance_recurring", id=recurring_id, now=now)
