"""Recurring deliveries: created by callers, their occurrences started by the scheduler."""

from __future__ import annotations

import logging

from delivery_service import clock
from delivery_service.domain import lifecycle
from delivery_service.domain.recurring import Control, after, on_behalf_of
from delivery_service.domain.requests import NewRecurring, request_digest
from delivery_service.store import deliveries, recurring
from delivery_service.store.connection import Database
from delivery_service.store.records import Delivery, RecurringDelivery
from delivery_service.usecases.deliveries import checked, prepare_locked
from delivery_service.usecases.idempotency import create_once

log = logging.getLogger(__name__)

# The occurrences GetRecurringDelivery lists, newest first.
LISTED_OCCURRENCES = 100


async def create(db: Database, new: NewRecurring, operator: str) -> RecurringDelivery:
    """Creates a recurring delivery for the operator, who is recorded as its creator;
    the operator repeating a request with its request_id gets the first answer back."""
    return await create_once(
        db,
        operator,
        new.template.request_id,
        request_digest(new),
        find=recurring.by_request,
        insert=lambda conn: recurring.insert(conn, new, operator, clock.now()),
        read=recurring.get,
    )


async def control(db: Database, recurring_id: int, control: Control) -> RecurringDelivery:
    """Pauses, resumes or cancels a recurring delivery; a repeat answers it unchanged."""
    async with db.transaction() as conn:
        state = await recurring.lock_state(conn, recurring_id)
        target = checked(lambda s: after(s, control), state)
        if target is not state:
            await recurring.set_state(conn, recurring_id, target, clock.now())
        return await recurring.get(conn, recurring_id)


async def get(db: Database, recurring_id: int) -> tuple[RecurringDelivery, list[Delivery]]:
    """The recurring delivery and its latest occurrences."""
    async with db.connection() as conn:
        row = await recurring.get(conn, recurring_id)
        occurrences, _ = await deliveries.page(
            conn,
            before_id=2**63 - 1,
            state=None,
            recurring_delivery_id=recurring_id,
            limit=LISTED_OCCURRENCES,
        )
    return row, occurrences


async def start_due_occurrences(db: Database) -> list[tuple[int, bool]]:
    """Creates and prepares the occurrences that are due; starts the send of those that
    need no confirmation. Returns (delivery id, started) for each occurrence created."""
    created: list[tuple[int, bool]] = []
    now = clock.now()
    async with db.transaction() as conn:
        for recurring_id, confirm_before_send, creator in await recurring.due(conn):
            delivery_id = await recurring.insert_occurrence(conn, recurring_id)
            prepared = await prepare_locked(conn, await deliveries.lock(conn, delivery_id))
            started = (
                not confirm_before_send and prepared.delivery.state is lifecycle.State.APPROVED
            )
            if started:
                # On the authority of the operator who created the recurring delivery.
                await deliveries.set_confirmed(conn, delivery_id, on_behalf_of(creator), now)
            await recurring.advance(conn, recurring_id, now)
            created.append((delivery_id, started))
    for delivery_id, started in created:
        log.info(
            "occurrence %d created (%s)",
            delivery_id,
            "sending" if started else "waiting for confirmation",
        )
    return created
