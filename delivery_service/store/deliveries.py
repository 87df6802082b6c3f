"""Deliveries: their creation, reads, and the lifecycle changes callers make."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from delivery_service import clock
from delivery_service.domain import lifecycle
from delivery_service.domain.requests import NewDelivery, Recipient, request_digest
from delivery_service.store.connection import (
    Conn,
    NotFound,
    copy_rows,
    execute,
    fetch_all,
    fetch_one,
    fetch_tuples,
    fetch_value,
)
from delivery_service.store.records import Delivery, ListedDelivery

# The most bytes of bodies one page of deliveries carries: 3 MiB, so that a page stays
# within gRPC clients' default 4 MiB receive limit.
PAGE_BODY_BYTES = 3 << 20


async def insert_target(conn: Conn, segment: str | None, recipients: Sequence[Recipient]) -> int:
    """A target: a segment, or a list of recipients loaded by COPY, in order."""
    target_id: int = await fetch_value(conn, "insert_target", segment=segment)
    if segment is None:
        await add_recipients(conn, target_id, 0, recipients)
    return target_id


async def add_recipients(
    conn: Conn, target_id: int, first: int, recipients: Sequence[Recipient]
) -> None:
    """Recipients into a target's list by COPY, in order, from position `first`."""
    await copy_rows(
        conn,
        "copy_target_recipients",
        ((target_id, first + i, r.profile_id, r.email) for i, r in enumerate(recipients)),
    )


async def target_list(conn: Conn, target_id: int) -> tuple[str | None, int]:
    """A target's segment (None for a recipient list) and its list's length."""
    rows = await fetch_tuples(conn, "target_list", target_id=target_id)
    segment, length = rows[0]
    return segment, int(length)


async def recipients_at(conn: Conn, target_id: int, first: int, end: int) -> list[Recipient]:
    """A recipient list's recipients at positions [first, end)."""
    rows = await fetch_tuples(conn, "recipients_at", target_id=target_id, first=first, end=end)
    return [Recipient(profile_id, email) for profile_id, email in rows]


def template_params(new: NewDelivery, target_id: int) -> dict[str, object]:
    """The columns a delivery and a recurring delivery's template share."""
    return {
        "label": new.label,
        "subject": new.subject,
        "body": new.body,
        "links": new.links,
        "target_id": target_id,
        "feedback_mode": str(new.feedback_mode),
        "validity_period": new.validity_period,
        "required_approvals": [str(s) for s in new.required_approvals],
    }


async def insert(conn: Conn, new: NewDelivery, operator: str) -> int | None:
    """Creates a DRAFT delivery and claims its request_id for the operator; None if
    another request of the operator claimed it first (the caller then rolls back)."""
    target_id = await insert_target(conn, new.segment, new.recipients)
    delivery_id: int = await fetch_value(
        conn,
        "insert_delivery",
        **template_params(new, target_id),
        recurring_delivery_id=None,
        created_by=operator,
    )
    if new.request_id is None:
        return delivery_id
    claimed: int | None = await fetch_value(
        conn,
        "claim_delivery_request",
        request_id=new.request_id,
        operator=operator,
        delivery_id=delivery_id,
        request_digest=request_digest(new),
    )
    return claimed


async def by_request(conn: Conn, operator: str, request_id: str) -> tuple[int, bytes] | None:
    """The delivery an operator's request_id created, and the digest of that request."""
    rows = await fetch_tuples(
        conn, "delivery_id_by_request", request_id=request_id, operator=operator
    )
    return (rows[0][0], bytes(rows[0][1] or b"")) if rows else None


async def get(conn: Conn, delivery_id: int) -> Delivery:
    delivery = await fetch_one(conn, "get_delivery", Delivery, id=delivery_id)
    if delivery is None:
        raise NotFound(f"delivery {delivery_id} does not exist")
    return delivery


async def lock(conn: Conn, delivery_id: int) -> Delivery:
    """The delivery, locked until the transaction ends."""
    delivery = await fetch_one(conn, "lock_delivery", Delivery, id=delivery_id)
    if delivery is None:
        raise NotFound(f"delivery {delivery_id} does not exist")
    return delivery


async def page(
    conn: Conn,
    *,
    before_id: int,
    state: lifecycle.State | None,
    recurring_delivery_id: int | None,
    limit: int,
    full: bool = False,
) -> tuple[list[Delivery], bool]:
    """A page of deliveries, newest first, and whether the page was cut short by its
    bodies' size: their bodies only if `full`, and then at most PAGE_BODY_BYTES of them
    (but one delivery at least)."""
    rows = await fetch_all(
        conn,
        "list_deliveries",
        ListedDelivery,
        before_id=before_id,
        state=None if state is None else str(state),
        recurring_delivery_id=recurring_delivery_id,
        limit=limit,
        full=full,
        max_bytes=PAGE_BODY_BYTES,
    )
    return list(rows), bool(rows) and rows[0].page_rows > len(rows)


async def set_approvals(
    conn: Conn, delivery_id: int, state: lifecycle.State, steps: list[lifecycle.ApprovalStep]
) -> None:
    await execute(
        conn,
        "set_approvals",
        id=delivery_id,
        state=str(state),
        approvals=[str(s) for s in steps],
    )


async def set_confirmed(conn: Conn, delivery_id: int, operator: str, now: dt.datetime) -> None:
    """SENDING from `now`, when the validity period starts."""
    await execute(conn, "set_confirmed", id=delivery_id, operator=operator, now=now)


async def set_stopped(conn: Conn, delivery_id: int) -> None:
    await execute(conn, "set_stopped", id=delivery_id, now=clock.now())
