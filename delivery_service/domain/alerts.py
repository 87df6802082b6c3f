"""Delivery alerts (SPEC.md, "Failure breakdown and alerts"): the criteria a live
delivery is checked against on a schedule, and the optional stop on hard bounces."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass


class Criterion(enum.IntEnum):
    """The values are delivery.v1.AlertCriterion's."""

    HARD_BOUNCE_RATIO = 1
    SOFT_BOUNCE_RATIO = 2
    NOTHING_RELAYED = 3
    LOW_THROUGHPUT = 4
    COMPLAINT_RATIO = 5


@dataclass(frozen=True)
class AlertRules:
    """The thresholds; a delivery with fewer messages than `min_messages` is not checked."""

    min_messages: int = 100
    hard_bounce_ratio: float = 0.05
    soft_bounce_ratio: float = 0.05
    complaint_ratio: float = 0.001
    # Confirmed this long ago with nothing relayed yet.
    nothing_relayed_seconds: float = 900.0
    # Fewer messages relayed per hour than this, once the delivery has sent for
    # `throughput_window_seconds`, while messages remain.
    min_messages_per_hour: float = 1000.0
    throughput_window_seconds: float = 600.0
    # A hard-bounce ratio above this stops the rest of the delivery; None: never.
    stop_hard_bounce_ratio: float | None = None


@dataclass(frozen=True)
class Facts:
    """What a live delivery's counters say at one moment."""

    to_deliver: int
    sent: int
    delivered: int
    hard_failed: int
    soft_failed: int
    complaints: int
    # Seconds since the send was confirmed; whether messages are still being relayed.
    seconds_since_confirm: float
    sending: bool


@dataclass(frozen=True)
class Alert:
    criterion: Criterion
    # The measured value: a ratio (0 to 1), seconds, or messages per hour.
    value: float
    threshold: float
    message: str


@dataclass(frozen=True)
class RaisedAlert:
    """An alert as recorded: raised once per criterion and delivery per day."""

    delivery_id: int
    criterion: Criterion
    raise_time: dt.datetime
    value: float
    threshold: float
    message: str
    stopped: bool


def ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def evaluate(facts: Facts, rules: AlertRules) -> list[Alert]:
    """The criteria a delivery crosses now (none below the minimum number of messages)."""
    if facts.to_deliver < rules.min_messages:
        return []
    alerts = []
    hard = ratio(facts.hard_failed, facts.sent)
    if hard > rules.hard_bounce_ratio:
        text = f"{hard:.1%} of the messages sent hard-bounced"
        alerts.append(Alert(Criterion.HARD_BOUNCE_RATIO, hard, rules.hard_bounce_ratio, text))
    soft = ratio(facts.soft_failed, facts.sent)
    if soft > rules.soft_bounce_ratio:
        text = f"{soft:.1%} of the messages sent failed soft"
        alerts.append(Alert(Criterion.SOFT_BOUNCE_RATIO, soft, rules.soft_bounce_ratio, text))
    complaints = ratio(facts.complaints, facts.delivered)
    if complaints > rules.complaint_ratio:
        text = f"{complaints:.2%} of the messages delivered drew a complaint"
        alerts.append(Alert(Criterion.COMPLAINT_RATIO, complaints, rules.complaint_ratio, text))
    elapsed = facts.seconds_since_confirm
    if facts.sending and facts.sent == 0 and elapsed >= rules.nothing_relayed_seconds:
        text = f"nothing relayed {elapsed:.0f} s after the send was confirmed"
        threshold = rules.nothing_relayed_seconds
        alerts.append(Alert(Criterion.NOTHING_RELAYED, elapsed, threshold, text))
    if facts.sending and 0 < facts.sent < facts.to_deliver:
        per_hour = facts.sent * 3600.0 / elapsed if elapsed > 0 else 0.0
        if elapsed >= rules.throughput_window_seconds and per_hour < rules.min_messages_per_hour:
            text = f"{per_hour:.0f} messages relayed per hour"
            threshold = rules.min_messages_per_hour
            alerts.append(Alert(Criterion.LOW_THROUGHPUT, per_hour, threshold, text))
    return alerts


def stops(facts: Facts, rules: AlertRules) -> bool:
    """Whether the rest of the delivery is stopped: its hard-bounce ratio is over the
    configured limit (checked only while messages remain to relay)."""
    limit = rules.stop_hard_bounce_ratio
    return (
        limit is not None
        and facts.sending
        and facts.to_deliver >= rules.min_messages
        and ratio(facts.hard_failed, facts.sent) > limit
    )
