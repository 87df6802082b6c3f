"""Delivery alerts: the scheduled check of every live delivery against the criteria,
the optional stop on hard bounces, and listings."""

from __future__ import annotations

import datetime as dt
import logging

from delivery_service import clock
from delivery_service.domain import alerts, lifecycle
from delivery_service.domain.alerts import AlertRules, Criterion, RaisedAlert
from delivery_service.store import alerts as store
from delivery_service.store import deliveries as delivery_store
from delivery_service.store.connection import Conflict, Database
from delivery_service.usecases import deliveries, figures

log = logging.getLogger(__name__)


async def check(db: Database, rules: AlertRules) -> int:
    """The alerts round: raises what each live delivery crosses (once per criterion and
    day) and stops a delivery over the hard-bounce limit. Returns the alerts raised."""
    async with db.connection() as conn:
        live = await store.live_deliveries(conn)
    raised = 0
    for delivery_id, confirm_time in live:
        now = clock.now()
        current = await figures.current(db, delivery_id)
        k = figures.kpis_of(current)
        facts = alerts.Facts(
            to_deliver=k.to_deliver,
            sent=k.sent,
            delivered=k.delivered,
            hard_failed=k.hard_failed,
            soft_failed=k.soft_failed,
            complaints=k.complaints,
            seconds_since_confirm=(now - confirm_time).total_seconds() if confirm_time else 0.0,
            sending=current.state is lifecycle.State.SENDING,
        )
        stop = alerts.stops(facts, rules)
        async with db.transaction() as conn:
            new = await store.raise_alerts(
                conn, delivery_id, alerts.evaluate(facts, rules), stop, now
            )
        for criterion in new:
            log.warning("delivery %d: alert %s", delivery_id, criterion.name)
        raised += len(new)
        if stop:
            await _stop(db, delivery_id)
    return raised


async def _stop(db: Database, delivery_id: int) -> None:
    try:
        await deliveries.stop(db, delivery_id)
    except Conflict:  # it ended meanwhile: nothing left to stop
        return
    log.warning("delivery %d stopped: its hard-bounce ratio is over the limit", delivery_id)


async def page(
    db: Database,
    delivery_id: int | None,
    after: tuple[dt.datetime, int, Criterion] | None,
    limit: int,
) -> list[RaisedAlert]:
    async with db.connection() as conn:
        if delivery_id is not None:
            await delivery_store.get(conn, delivery_id)  # NOT_FOUND for an unknown one
        return await store.page(conn, delivery_id, after, limit)
