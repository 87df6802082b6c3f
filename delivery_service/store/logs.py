"""Sending logs, a page at a time, and the history of a profile or an address."""

from __future__ import annotations

import datetime as dt

from delivery_service.domain import feedback as fb
from delivery_service.store import deliveries, profiles
from delivery_service.store.connection import (
    Conflict,
    Conn,
    NotFound,
    execute,
    fetch_all,
    fetch_tuples,
    fetch_value,
)
from delivery_service.store.records import SendingLog


async def page(
    conn: Conn, delivery_id: int, status: fb.Status | None, after: int, limit: int
) -> list[SendingLog]:
    """A page of a delivery's sending logs, in message order, optionally of one status;
    FAILED_PRECONDITION once the retention pruned them."""
    await deliveries.get(conn, delivery_id)  # NOT_FOUND for an unknown delivery
    if status is None:
        found = await fetch_all(
            conn, "list_sending_logs", SendingLog, delivery_id=delivery_id, after=after, limit=limit
        )
    else:
        found = await fetch_all(
            conn,
            "list_sending_logs_by_status",
            SendingLog,
            delivery_id=delivery_id,
            status=int(status),
            after=after,
            limit=limit,
        )
    # Checked after the read: a page read while the retention deleted would be cut.
    await ensure_kept(conn, delivery_id)
    return found


async def pruned_time(conn: Conn, delivery_id: int) -> dt.datetime | None:
    """When the retention pruned the delivery's sending logs; None while they are kept."""
    pruned: dt.datetime | None = await fetch_value(
        conn, "logs_pruned_time", delivery_id=delivery_id
    )
    return pruned


async def ensure_kept(conn: Conn, delivery_id: int) -> None:
    """FAILED_PRECONDITION if the retention pruned the delivery's sending logs."""
    pruned = await pruned_time(conn, delivery_id)
    if pruned is not None:
        raise Conflict(
            f"the sending logs of delivery {delivery_id} are past their retention: pruned "
            f"at {pruned.isoformat()}; its KPIs (GetKpis) are kept, final"
        )


async def past_retention(
    conn: Conn, now: dt.datetime, beyond: dt.timedelta, limit: int
) -> list[int]:
    """The finished deliveries whose sending logs are past their retention (`beyond`
    after their validity), their feedback events pruned already; at most `limit`."""
    rows = await fetch_tuples(
        conn, "sending_logs_past_retention", now=now, beyond=beyond, limit=limit
    )
    return [delivery_id for (delivery_id,) in rows]


async def prune(conn: Conn, delivery_id: int, now: dt.datetime, limit: int) -> int:
    """Marks the delivery's logs pruned (its figures final from now on), and deletes up
    to `limit` of its sending logs and dropped recipients; returns how many."""
    await execute(conn, "mark_logs_pruned", delivery_id=delivery_id, now=now)
    pruned: int = await fetch_value(
        conn, "prune_sending_logs", delivery_id=delivery_id, limit=limit
    )
    return pruned


async def history(
    conn: Conn, *, profile_id: str | None, email: str | None, before: int, limit: int
) -> list[SendingLog]:
    """A page of the messages sent to a profile or an address, newest first."""
    if profile_id is not None:
        if not await profiles.exists(conn, profile_id):
            raise NotFound(f"profile {profile_id!r} does not exist")
        return await fetch_all(
            conn,
            "history_by_profile",
            SendingLog,
            profile_id=profile_id,
            before=before,
            limit=limit,
        )
    return await fetch_all(
        conn, "history_by_email", SendingLog, email=email, before=before, limit=limit
    )
