from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from delivery_service.domain.feedback import FeedbackMode
from delivery_service.domain.kpis import Counters, compute, percent


def kpis(mode: FeedbackMode, n: int, c: Counters, opened: int = 0, clicked: int = 0):  # type: ignore[no-untyped-def]
    return compute(
        mode, n, c, opened_at_stats=opened, clicked_at_stats=clicked, stats_time=None, final=False
    )


def test_without_efs_starts_at_100_percent() -> None:
    k = kpis(FeedbackMode.WITHOUT_EFS, 10, Counters())
    assert (k.delivered_percent, k.bounces_percent, k.delivered, k.failed) == (100.0, 0.0, 10, 0)


def test_efs_starts_at_0_percent() -> None:
    k = kpis(FeedbackMode.EFS, 10, Counters(relayed=10))
    assert (k.delivered_percent, k.bounces_percent, k.pending) == (0.0, 0.0, 10)


def test_without_efs_soft_bounces_are_not_failures_yet() -> None:
    c = Counters(relayed=10, soft_bounced=3, hard_bounced=1, expired=1, delivered=2)
    k = kpis(FeedbackMode.WITHOUT_EFS, 10, c)
    assert (k.failed, k.delivered) == (2, 8)
    assert (k.delivered_percent, k.bounces_percent) == (80.0, 20.0)


def test_efs_soft_bounces_are_failures_until_retried() -> None:
    c = Counters(relayed=10, soft_bounced=3, hard_bounced=1, expired=1, delivered=2)
    k = kpis(FeedbackMode.EFS, 10, c)
    assert (k.failed, k.delivered, k.pending) == (5, 2, 3)
    assert (k.delivered_percent, k.bounces_percent) == (20.0, 50.0)


def test_open_and_click_rates_are_over_delivered_messages() -> None:
    k = kpis(FeedbackMode.EFS, 10, Counters(relayed=10, delivered=4), opened=2, clicked=1)
    assert (k.open_percent, k.click_percent) == (50.0, 25.0)


def test_empty_delivery_has_no_division_by_zero() -> None:
    k = kpis(FeedbackMode.EFS, 0, Counters())
    assert (k.delivered_percent, k.open_percent) == (0.0, 0.0)
    assert percent(1, 0) == 0.0


STATS_TIME = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
EFS, WITHOUT = FeedbackMode.EFS, FeedbackMode.WITHOUT_EFS


@pytest.mark.parametrize(
    ("mode", "counters", "stats_time", "final", "expected"),
    [
        (
            EFS,
            Counters(relayed=9, delivered=4, soft_bounced=1, hard_bounced=2, expired=1),
            STATS_TIME,
            True,
            (EFS, 10, 9, 4, 4, 1, 3, 1, 40.0, 40.0, 75.0, 25.0, STATS_TIME, True),
        ),
        (
            WITHOUT,
            Counters(relayed=8, delivered=5, soft_bounced=1, hard_bounced=1, expired=1),
            None,
            False,
            (WITHOUT, 10, 8, 8, 2, 0, 3, 1, 80.0, 20.0, 37.5, 12.5, None, False),
        ),
    ],
)
def test_every_field(
    mode: FeedbackMode,
    counters: Counters,
    stats_time: dt.datetime | None,
    final: bool,
    expected: tuple[object, ...],
) -> None:
    # Kpis' fields in order: feedback_mode, to_deliver, sent, delivered, failed, pending,
    # opened, clicked, the four percents, stats_time, final.
    k = compute(
        mode,
        10,
        counters,
        opened_at_stats=3,
        clicked_at_stats=1,
        stats_time=stats_time,
        final=final,
    )
    assert dataclasses.astuple(k) == expected


def test_efs_pending_reaches_zero_once_every_message_is_reported() -> None:
    c = Counters(relayed=10, delivered=7, soft_bounced=1, hard_bounced=1, expired=1)
    assert kpis(FeedbackMode.EFS, 10, c).pending == 0
    # At expiry, messages never relayed are reported too: pending never goes below 0.
    c = Counters(relayed=8, delivered=7, expired=3)
    assert kpis(FeedbackMode.EFS, 10, c).pending == 0
