"""Delivery alerts' storage: the deliveries the alerts round checks, the alerts raised
(once per criterion and delivery per day: the table's key), and listings."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from delivery_service.domain.alerts import Alert, Criterion, RaisedAlert
from delivery_service.store.connection import Conn, fetch_tuples, text_array


async def live_deliveries(conn: Conn) -> list[tuple[int, dt.datetime | None]]:
    """(id, confirm time) of every delivery being sent or sent."""
    return [(i, t) for i, t in await fetch_tuples(conn, "live_deliveries")]


async def raise_alerts(
    conn: Conn, delivery_id: int, alerts: Sequence[Alert], stopped: bool, now: dt.datetime
) -> list[Criterion]:
    """Records alerts not raised yet today; returns the criteria raised now."""
    if not alerts:
        return []
    rows = await fetch_tuples(
        conn,
        "raise_alerts",
        delivery_id=delivery_id,
        now=now,
        criteria=[int(a.criterion) for a in alerts],
        values=[a.value for a in alerts],
        thresholds=[a.threshold for a in alerts],
        messages=text_array(a.message for a in alerts),
        stopped=[stopped and a.criterion is Criterion.HARD_BOUNCE_RATIO for a in alerts],
    )
    return [Criterion(c) for (c,) in rows]


async def page(
    conn: Conn,
    delivery_id: int | None,
    after: tuple[dt.datetime, int, Criterion] | None,
    limit: int,
) -> list[RaisedAlert]:
    """A page of alerts, newest first: one delivery's, or every delivery's."""
    after_time, after_delivery, after_criterion = after or (None, 0, 0)
    if delivery_id is None:
        rows = await fetch_tuples(
            conn,
            "list_all_alerts",
            after_time=after_time,
            after_delivery=after_delivery,
            after_criterion=int(after_criterion),
            limit=limit,
        )
    else:
        rows = await fetch_tuples(
            conn,
            "list_delivery_alerts",
            delivery_id=delivery_id,
            after_time=after_time,
            after_criterion=int(after_criterion),
            limit=limit,
        )
    return [
        RaisedAlert(d, Criterion(c), t, value, threshold, message, stopped)
        for d, c, t, value, threshold, message, stopped in rows
    ]
