"""Sending logs, a page at a time, and the history of a profile or an address."""

from __future__ import annotations

from delivery_service.domain import feedback as fb
from delivery_service.store import deliveries, profiles
from delivery_service.store.connection import Conn, NotFound, fetch_all
from delivery_service.store.records import SendingLog


async def page(
    conn: Conn, delivery_id: int, status: fb.Status | None, after: int, limit: int
) -> list[SendingLog]:
    """A page of a delivery's sending logs, in message order, optionally of one status."""
    await deliveries.get(conn, delivery_id)  # NOT_FOUND for an unknown delivery
    if status is None:
        return await fetch_all(
            conn, "list_sending_logs", SendingLog, delivery_id=delivery_id, after=after, limit=limit
        )
    return await fetch_all(
        conn,
        "list_sending_logs_by_status",
        SendingLog,
        delivery_id=delivery_id,
        status=int(status),
        after=after,
        limit=limit,
    )


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
