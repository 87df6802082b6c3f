"""Deliveries as callers drive them: create, prepare, approve, confirm, stop, and read."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from delivery_service import clock
from delivery_service.domain import feedback as fb
from delivery_service.domain import lifecycle
from delivery_service.domain import quarantine as q
from delivery_service.domain.requests import NewDelivery, ProfileUpdate, Recipient, request_digest
from delivery_service.store import addresses as store_addresses
from delivery_service.store import counters, deliveries, logs, preparation, profiles
from delivery_service.store.connection import AlreadyExists, Conflict, Conn, Database
from delivery_service.store.records import Delivery, SendingLog
from delivery_service.usecases import retention
from delivery_service.usecases.idempotency import create_once

log = logging.getLogger(__name__)

S = TypeVar("S")
R = TypeVar("R")


@dataclass(frozen=True)
class Prepared:
    delivery: Delivery
    analysis: preparation.Analysis


def checked(rule: Callable[[S], R], state: S) -> R:
    """Applies a lifecycle rule; a refused transition is a Conflict (FAILED_PRECONDITION)."""
    try:
        return rule(state)
    except lifecycle.TransitionError as exc:
        raise Conflict(str(exc)) from exc


async def create(db: Database, new: NewDelivery, operator: str) -> Delivery:
    """Creates a DRAFT delivery for the operator; the operator repeating a request with
    its request_id gets the first answer back."""
    return await create_once(
        db,
        operator,
        new.request_id,
        request_digest(new),
        find=deliveries.by_request,
        insert=lambda conn: deliveries.insert(conn, new, operator),
        read=deliveries.get,
    )


async def add_recipients(
    db: Database, delivery_id: int, position: int, recipients: list[Recipient]
) -> int:
    """Adds recipients at `position` to a DRAFT delivery's recipient list (an occurrence
    of a recurring delivery, whose list its occurrences share, is never DRAFT: it is
    prepared as it is created); a repeat of an earlier call (same position, same
    recipients) changes nothing. Returns the list's length."""
    async with db.transaction() as conn:
        delivery = await deliveries.lock(conn, delivery_id)
        if delivery.state is not lifecycle.State.DRAFT:
            raise Conflict(
                f"delivery {delivery_id} is {delivery.state}: recipients are added to a "
                "DRAFT delivery only"
            )
        segment, length = await deliveries.target_list(conn, delivery.target_id)
        if segment is not None:
            raise Conflict(
                f"delivery {delivery_id} targets the segment {segment!r}: recipients are "
                "added to a recipient list only"
            )
        end = position + len(recipients)
        if position > length:
            raise Conflict(
                f"position {position} is past the end of the list ({length} recipients): "
                "add the recipients before it first"
            )
        if position < length:
            if await deliveries.recipients_at(conn, delivery.target_id, position, end) == (
                recipients
            ):
                return length  # a repeat: already there
            raise AlreadyExists(
                f"the list already has other recipients at positions {position} to "
                f"{min(end, length) - 1}; the next call's position is {length}"
            )
        await deliveries.add_recipients(conn, delivery.target_id, position, recipients)
        return end


async def prepare_locked(conn: Conn, delivery: Delivery) -> Prepared:
    """Preparation of a locked DRAFT delivery, inside the caller's transaction."""
    analysis = await preparation.analyse(conn, delivery.id, delivery.target_id)
    state = lifecycle.after_preparation(delivery.required_approvals)
    await preparation.set_prepared(conn, delivery.id, state, analysis)
    return Prepared(await deliveries.lock(conn, delivery.id), analysis)


async def prepare(db: Database, delivery_id: int) -> Prepared:
    async with db.transaction() as conn:
        delivery = await deliveries.lock(conn, delivery_id)
        checked(lifecycle.check_prepare, delivery.state)
        return await prepare_locked(conn, delivery)


async def approve(db: Database, delivery_id: int, step: lifecycle.ApprovalStep) -> Delivery:
    async with db.transaction() as conn:
        delivery = await deliveries.lock(conn, delivery_id)
        try:
            state, steps = lifecycle.approve(
                delivery.state, delivery.required_approvals, delivery.approvals, step
            )
        except lifecycle.TransitionError as exc:
            raise Conflict(str(exc)) from exc
        await deliveries.set_approvals(conn, delivery_id, state, steps)
        return await deliveries.lock(conn, delivery_id)


async def confirm(db: Database, delivery_id: int, operator: str) -> Delivery:
    """Starts the send; confirming again answers the delivery unchanged."""
    async with db.transaction() as conn:
        delivery = await deliveries.lock(conn, delivery_id)
        if checked(lifecycle.check_confirm, delivery.state):
            await deliveries.set_confirmed(conn, delivery_id, operator, clock.now())
            log.info("delivery %d confirmed by %s", delivery_id, operator)
            delivery = await deliveries.lock(conn, delivery_id)
        return delivery


async def stop(db: Database, delivery_id: int) -> Delivery:
    async with db.transaction() as conn:
        delivery = await deliveries.lock(conn, delivery_id)
        checked(lifecycle.check_stop, delivery.state)
        if delivery.state is not lifecycle.State.STOPPED:
            await deliveries.set_stopped(conn, delivery_id)
            delivery = await deliveries.lock(conn, delivery_id)
        return delivery


async def get(db: Database, delivery_id: int) -> Delivery:
    async with db.connection() as conn:
        return await deliveries.get(conn, delivery_id)


async def page(
    db: Database,
    *,
    before_id: int,
    state: lifecycle.State | None,
    recurring_delivery_id: int | None,
    limit: int,
    full: bool,
) -> tuple[list[Delivery], bool]:
    """A page of deliveries (bodies only if `full`), and whether it was cut short."""
    async with db.connection() as conn:
        return await deliveries.page(
            conn,
            before_id=before_id,
            state=state,
            recurring_delivery_id=recurring_delivery_id,
            limit=limit,
            full=full,
        )


async def sending_logs(
    db: Database, delivery_id: int, status: fb.Status | None, after: int, limit: int
) -> list[SendingLog]:
    async with db.transaction() as conn:
        return await logs.page(conn, delivery_id, status, after, limit)


# Sending logs and dropped recipients the retention deletes in one transaction.
LOGS_PRUNED_PER_ROUND = 10_000


async def prune_sending_logs(db: Database, beyond_validity: dt.timedelta) -> int:
    """The sending logs' retention round: deletes the sending logs and dropped recipients
    of finished deliveries past their validity plus `beyond_validity` whose feedback
    events are pruned, at most LOGS_PRUNED_PER_ROUND, one transaction per delivery;
    returns how many."""
    now = clock.now()
    async with db.connection() as conn:
        due = await logs.past_retention(conn, now, beyond_validity, LOGS_PRUNED_PER_ROUND)

    async def prune(conn: Conn, delivery_id: int, left: int) -> int:
        # The counters' lock: ComputeStats, which recounts from the logs, waits.
        await counters.lock_exclusive(conn, delivery_id)
        return await logs.prune(conn, delivery_id, now, left)

    return await retention.prune_deliveries(db, due, prune, LOGS_PRUNED_PER_ROUND)


async def history(
    db: Database, *, profile_id: str | None, email: str | None, before: int, limit: int
) -> list[SendingLog]:
    async with db.transaction() as conn:
        return await logs.history(
            conn, profile_id=profile_id, email=email, before=before, limit=limit
        )


async def upsert_profiles(
    db: Database, updates: list[ProfileUpdate], operator: str, rules: q.Rules
) -> tuple[int, int]:
    """Creates or replaces profiles; the address of one flagged quarantined is
    quarantined by hand (the address table holds quarantines: unflagged, nothing is
    released)."""
    now = clock.now()
    micros = int(now.timestamp() * 1_000_000)
    async with db.transaction() as conn:
        counts = await profiles.upsert(conn, updates, now)
        await store_addresses.fold(
            conn,
            [
                (p.email.lower(), q.manual_event(q.AddressStatus.QUARANTINED, operator, micros))
                for p in updates
                if p.quarantined and p.email
            ],
            rules,
            micros,
        )
        return counts
