"""The audit trail: appended, never updated."""

from __future__ import annotations

from delivery_service.store.connection import Conn, execute, fetch_all
from delivery_service.store.records import AuditEvent


async def append(conn: Conn, event: AuditEvent) -> None:
    await execute(
        conn,
        "append_audit_event",
        time=event.time,
        operator=event.operator,
        method=event.method,
        target=event.target,
        code=event.code,
        request_id=event.request_id,
        peer=event.peer,
    )


async def page(conn: Conn, *, before: int, operator: str, limit: int) -> list[AuditEvent]:
    """A page of the trail before the event of id `before`, newest first."""
    return await fetch_all(
        conn, "list_audit_events", AuditEvent, before=before, operator=operator, limit=limit
    )
