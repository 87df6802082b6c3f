"""KPI arithmetic, as SPEC.md defines it, from counters that are O(1) to read."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from delivery_service.domain.alerts import RaisedAlert
from delivery_service.domain.feedback import FeedbackMode

# The recipient domains the failure breakdown names; the others are counted together.
LARGEST_DOMAINS = 10


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
    complained: int = 0


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
    complaints: int
    complaint_percent: float
    hard_failed: int = 0
    soft_failed: int = 0
    # (failure type, failure reason, messages), most first.
    failures: tuple[tuple[int, int, int], ...] = ()
    domains: tuple[DomainKpis, ...] = ()
    alerts: tuple[RaisedAlert, ...] = ()


@dataclass(frozen=True)
class DomainKpis:
    """A recipient domain's share of the figures ("" for the other domains together)."""

    domain: str
    to_deliver: int
    sent: int
    delivered: int
    failed: int
    opened: int
    clicked: int
    complaints: int


def _tally(mode: FeedbackMode, to_deliver: int, counters: Counters) -> tuple[int, int, int]:
    """(delivered, failed, pending) of N messages with these counters, by the mode's rules.

    Without EFS a message counts as delivered until it fails: Delivered % = (N - failed)
    / N starts at 100 %. With EFS only reported deliveries count: Delivered % = sent / N
    starts at 0 %, and a soft bounce counts as failed until a retry succeeds.
    """
    terminal_failures = counters.hard_bounced + counters.expired
    if mode is FeedbackMode.EFS:
        failed = terminal_failures + counters.soft_bounced
        reported = counters.delivered + failed
        # After expiry every message is reported, relayed or not: pending is then 0.
        return counters.delivered, failed, max(0, counters.relayed - reported)
    return to_deliver - terminal_failures, terminal_failures, 0


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
    domains: Sequence[tuple[str, int, Counters]] = (),
    failures: Sequence[tuple[int, int, int]] = (),
    alerts: Sequence[RaisedAlert] = (),
) -> Kpis:
    """The KPIs of a delivery (see _tally for Delivered % in each mode); Open % and
    Click % use the counts of the last stats computation, over the delivered messages.
    `domains`: (domain, to deliver, counters) of the largest domains and the others;
    `failures`: (failure type, reason, failed messages)."""
    delivered, failed, pending = _tally(mode, to_deliver, counters)
    return Kpis(
        feedback_mode=mode,
        to_deliver=to_deliver,
        sent=counters.relayed,
        delivered=delivered,
        failed=failed,
        pending=pending,
        opened=opened_at_stats,
        clicked=clicked_at_stats,
        complaints=counters.complained,
        delivered_percent=percent(delivered, to_deliver),
        bounces_percent=percent(failed, to_deliver),
        # Never above 100 %: a message opened, then failed (a late bounce), is no longer
        # delivered, though it was opened.
        open_percent=min(100.0, percent(opened_at_stats, delivered)),
        click_percent=min(100.0, percent(clicked_at_stats, delivered)),
        # Live, not on the stats schedule: complaints are what a sender watches for.
        complaint_percent=min(100.0, percent(counters.complained, delivered)),
        hard_failed=counters.hard_bounced,
        soft_failed=failed - counters.hard_bounced,
        failures=tuple(sorted(failures, key=lambda f: (-f[2], f[0], f[1]))),
        domains=tuple(
            DomainKpis(
                domain,
                n,
                c.relayed,
                *_tally(mode, n, c)[:2],
                c.opened,
                c.clicked,
                c.complained,
            )
            for domain, n, c in domains
        ),
        alerts=tuple(alerts),
        stats_time=stats_time,
        final=final,
    )
