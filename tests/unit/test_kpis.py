from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from delivery_service.domain.alerts import Criterion, RaisedAlert
from delivery_service.domain.feedback import FeedbackMode
from delivery_service.domain.kpis import LARGEST_DOMAINS, Counters, DomainKpis, compute, percent


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


def test_complaint_rate_is_over_delivered_messages_and_at_most_100() -> None:
    c = Counters(relayed=10, delivered=4, complained=1)
    assert kpis(FeedbackMode.EFS, 10, c).complaint_percent == 25.0
    # Complaints of messages that later failed (a late bounce) cannot push it past 100 %.
    c = Counters(relayed=10, delivered=1, hard_bounced=3, complained=3)
    assert kpis(FeedbackMode.EFS, 10, c).complaint_percent == 100.0


def test_the_breakdown_follows_the_mode_per_domain_and_sorts_failures_most_first() -> None:
    gmail = Counters(relayed=6, delivered=3, soft_bounced=1, hard_bounced=1, opened=2)
    others = Counters(relayed=4, delivered=4, complained=1, clicked=1)
    failures = [(1, 1, 1), (2, 2, 1), (2, 6, 3)]
    for mode, delivered, failed in ((FeedbackMode.EFS, 3, 2), (FeedbackMode.WITHOUT_EFS, 5, 1)):
        k = compute(
            mode, 10, Counters(relayed=10), opened_at_stats=0, clicked_at_stats=0,
            stats_time=None, final=False,
            domains=[("gmail.com", 6, gmail), ("", 4, others)], failures=failures,
        )  # fmt: skip
        assert k.domains[0] == DomainKpis("gmail.com", 6, 6, delivered, failed, 2, 0, 0)
        assert k.domains[1] == DomainKpis("", 4, 4, 4, 0, 0, 1, 1)
        assert k.failures == ((2, 6, 3), (1, 1, 1), (2, 2, 1))


def test_failures_split_into_hard_and_soft() -> None:
    c = Counters(relayed=10, soft_bounced=2, hard_bounced=3, expired=1)
    efs, without = kpis(FeedbackMode.EFS, 10, c), kpis(FeedbackMode.WITHOUT_EFS, 10, c)
    assert (efs.hard_failed, efs.soft_failed) == (3, 3)
    # Without EFS a soft bounce is no failure until the validity ends.
    assert (without.hard_failed, without.soft_failed) == (3, 1)


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
            Counters(
                relayed=9, delivered=4, soft_bounced=1, hard_bounced=2, expired=1, complained=1
            ),
            STATS_TIME,
            True,
            (
                EFS,
                10,
                9,
                4,
                4,
                1,
                3,
                1,
                40.0,
                40.0,
                75.0,
                25.0,
                STATS_TIME,
                True,
                1,
                25.0,
                2,
                2,
                (),
                (),
                (),
            ),
        ),
        (
            WITHOUT,
            Counters(relayed=8, delivered=5, soft_bounced=1, hard_bounced=1, expired=1),
            None,
            False,
            (
                WITHOUT,
                10,
                8,
                8,
                2,
                0,
                3,
                1,
                80.0,
                20.0,
                37.5,
                12.5,
                None,
                False,
                0,
                0.0,
                1,
                1,
                (),
                (),
                (),
            ),
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
    # opened, clicked, the four percents, stats_time, final, complaints, Complaint %,
    # hard and soft failed, the breakdowns.
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


def test_the_largest_domains_named_in_the_breakdown_are_10() -> None:
    assert LARGEST_DOMAINS == 10


def test_counters_start_at_zero() -> None:
    assert dataclasses.astuple(Counters()) == (0, 0, 0, 0, 0, 0, 0, 0)


def test_per_domain_figures_without_efs_count_a_message_delivered_until_it_fails() -> None:
    # 5 to deliver at example.org, 2 relayed, none reported: all 5 count as delivered.
    # A hard bounce and an expiry fail; a soft bounce is no failure yet.
    fresh = Counters(relayed=2)
    failing = Counters(relayed=9, soft_bounced=2, hard_bounced=1, expired=2, opened=3)
    k = compute(
        WITHOUT, 15, Counters(relayed=11), opened_at_stats=0, clicked_at_stats=0,
        stats_time=None, final=False,
        domains=[("example.org", 5, fresh), ("", 10, failing)],
    )  # fmt: skip
    assert k.domains == (
        DomainKpis("example.org", 5, 2, 5, 0, 0, 0, 0),
        DomainKpis("", 10, 9, 7, 3, 3, 0, 0),
    )


def test_per_domain_figures_with_efs_count_only_reported_deliveries_and_soft_bounces_fail() -> None:
    fresh = Counters(relayed=2)
    failing = Counters(
        relayed=9, delivered=3, soft_bounced=2, hard_bounced=1, expired=2, clicked=1, complained=2
    )
    k = compute(
        EFS, 15, Counters(relayed=11), opened_at_stats=0, clicked_at_stats=0,
        stats_time=None, final=False,
        domains=[("example.org", 5, fresh), ("", 10, failing)],
    )  # fmt: skip
    assert k.domains == (
        DomainKpis("example.org", 5, 2, 0, 0, 0, 0, 0),
        DomainKpis("", 10, 9, 3, 5, 0, 1, 2),
    )


def test_hard_failed_are_hard_bounces_and_soft_failed_the_other_failures_in_both_modes() -> None:
    # Only hard bounces: nothing failed soft.
    c = Counters(relayed=10, delivered=6, hard_bounced=4)
    for mode in (EFS, WITHOUT):
        k = kpis(mode, 10, c)
        assert (k.failed, k.hard_failed, k.soft_failed) == (4, 4, 0)
    # Only soft failures: expiries in both modes, soft bounces with EFS only.
    c = Counters(relayed=10, delivered=5, soft_bounced=3, expired=2)
    assert (kpis(EFS, 10, c).hard_failed, kpis(EFS, 10, c).soft_failed) == (0, 5)
    assert (kpis(WITHOUT, 10, c).hard_failed, kpis(WITHOUT, 10, c).soft_failed) == (0, 2)


def test_failures_sort_by_messages_most_first_then_by_type_then_by_reason() -> None:
    failures = [(2, 6, 1), (1, 7, 1), (2, 2, 1), (1, 1, 4), (2, 6, 9), (1, 3, 1)]
    k = compute(
        EFS, 20, Counters(relayed=20), opened_at_stats=0, clicked_at_stats=0,
        stats_time=None, final=False, failures=failures,
    )  # fmt: skip
    assert k.failures == ((2, 6, 9), (1, 1, 4), (1, 3, 1), (1, 7, 1), (2, 2, 1), (2, 6, 1))


def test_alerts_are_carried_in_the_kpis_as_given() -> None:
    raised = [
        RaisedAlert(7, Criterion.LOW_THROUGHPUT, STATS_TIME, 6.0, 1000.0, "low", False),
        RaisedAlert(7, Criterion.HARD_BOUNCE_RATIO, STATS_TIME, 0.5, 0.05, "hard", True),
    ]
    k = compute(
        EFS, 10, Counters(relayed=10), opened_at_stats=0, clicked_at_stats=0,
        stats_time=None, final=False, alerts=raised,
    )  # fmt: skip
    assert k.alerts == tuple(raised)


def test_open_and_click_rates_are_at_most_100() -> None:
    # Messages opened and clicked, then failed (late bounces), are no longer delivered.
    c = Counters(relayed=10, delivered=1, hard_bounced=9)
    k = kpis(EFS, 10, c, opened=3, clicked=2)
    assert (k.open_percent, k.click_percent) == (100.0, 100.0)
    # Exactly 100 % stays 100 %.
    k = kpis(EFS, 10, c, opened=1, clicked=1)
    assert (k.open_percent, k.click_percent) == (100.0, 100.0)


def test_empty_delivery_in_both_modes_has_zero_figures_and_empty_breakdowns() -> None:
    for mode in (EFS, WITHOUT):
        k = kpis(mode, 0, Counters())
        assert (k.delivered, k.failed, k.pending, k.hard_failed, k.soft_failed) == (0, 0, 0, 0, 0)
        assert (k.delivered_percent, k.bounces_percent) == (0.0, 0.0)
        assert (k.open_percent, k.click_percent, k.complaint_percent) == (0.0, 0.0, 0.0)
        assert (k.failures, k.domains, k.alerts) == ((), (), ())


def test_percent_is_of_the_whole() -> None:
    assert percent(1, 4) == 25.0
    assert percent(0, 4) == 0.0
    assert percent(4, 4) == 100.0
