"""KPI arithmetic, as SPEC.md defines it, from counters that are O(1) to read."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from delivery_service.domain.feedback import FeedbackMode


@dataclass(frozen=True)
class Counters:
    """How many messages of a delivery are in each bucket (see feedback.COUNTER_NAMES)."""

    relayed: int = 0
    delivered: int = 0
    soft_bounced: int = 0
    hard_bounced: int = 0
    expired: int = 0
    opened: int = 0
    clicked: int = 0


@dataclass(frozen=True)
class Kpis:
    feedback_mode: FeedbackMode
    to_deliver: int
    sent: int
    delivered: int
    failed: int
    pending: int
    opened: int
    clicked: int
    delivered_percent: float
    bounces_percent: float
    open_percent: float
    click_percent: float
    stats_time: dt.datetime | None
    final: bool


def percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def compute(
    mode: FeedbackMode,
    to_deliver: int,
    counters: Counters,
    *,
    opened_at_stats: int,
    clicked_at_stats: int,
    stats_time: dt.datetime | None,
    final: bool,
) -> Kpis:
    """The KPIs of a delivery.

    Without EFS a message counts as delivered until it fails: Delivered % =
    (N - failed) / N starts at 100 %. With EFS only reported deliveries count:
    Delivered % = sent / N starts at 0 %, and a soft bounce counts as failed
    until a retry succeeds. Open % and Click % use the counts of the last stats
    computation, over the delivered messages.
    """
    terminal_failures = counters.hard_bounced + counters.expired
    if mode is FeedbackMode.EFS:
        failed = terminal_failures + counters.soft_bounced
        delivered = counters.delivered
        reported = counters.delivered + failed
        # After expiry every message is reported, relayed or not: pending is then 0.
        pending = max(0, counters.relayed - reported)
    else:
        failed = terminal_failures
        delivered = to_deliver - failed
        pending = 0
    return Kpis(
        feedback_mode=mode,
        to_deliver=to_deliver,
        sent=counters.relayed,
        delivered=delivered,
        failed=failed,
        pending=pending,
        opened=opened_at_stats,
        clicked=clicked_at_stats,
        delivered_percent=percent(delivered, to_deliver),
        bounces_percent=percent(failed, to_deliver),
        # Never above 100 %: a message opened, then failed (a late bounce), is no longer
        # delivered, though it was opened.
        open_percent=min(100.0, percent(opened_at_stats, delivered)),
        click_percent=min(100.0, percent(clicked_at_stats, delivered)),
        stats_time=stats_time,
        final=final,
    )
