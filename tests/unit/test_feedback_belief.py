"""Which events from the MTA are believed: only what fits the relay record."""

from __future__ import annotations

import pytest

from delivery_service.domain import feedback as fb

K, OUT = fb.EventKind, fb.Outcome
EFS, WITHOUT = fb.FeedbackMode.EFS, fb.FeedbackMode.WITHOUT_EFS


def message(mode: fb.FeedbackMode, outcome: fb.Outcome, relayed: bool = True) -> fb.MessageState:
    return fb.MessageState(1, 1, mode, relayed, outcome, 0, False, False)


@pytest.mark.parametrize(
    ("mode", "outcome", "expected"),
    [
        (EFS, OUT.DELIVERED, True),
        (EFS, OUT.NONE, False),
        (EFS, OUT.SOFT_BOUNCED, False),
        (EFS, OUT.HARD_BOUNCED, False),
        (EFS, OUT.EXPIRED, False),
        (WITHOUT, OUT.NONE, True),
        (WITHOUT, OUT.SOFT_BOUNCED, True),
        (WITHOUT, OUT.DELIVERED, True),
        (WITHOUT, OUT.HARD_BOUNCED, False),
        (WITHOUT, OUT.EXPIRED, False),
    ],
)
def test_only_a_delivered_message_is_opened(
    mode: fb.FeedbackMode, outcome: fb.Outcome, expected: bool
) -> None:
    assert fb.engageable(mode, outcome) is expected


def test_nothing_is_believed_of_a_message_not_relayed() -> None:
    for kind in K:
        got = fb.refusal(message(EFS, OUT.NONE, relayed=False), kind, 0, 1, True)
        assert got is fb.Refusal.NOT_RELAYED


def test_a_click_names_a_link_of_the_content() -> None:
    delivered = message(EFS, OUT.DELIVERED)
    assert fb.refusal(delivered, K.CLICKED, 0, 1, False) is None
    assert fb.refusal(delivered, K.CLICKED, 1, 1, False) is fb.Refusal.LINK_INDEX
    assert fb.refusal(delivered, K.CLICKED, -1, 1, False) is fb.Refusal.LINK_INDEX
    assert fb.refusal(delivered, K.CLICKED, 2, 3, False) is None
    # An open carries no link.
    assert fb.refusal(delivered, K.OPENED, 7, 1, False) is None


def test_an_open_waits_for_its_delivery_report_or_comes_with_it() -> None:
    pending = message(EFS, OUT.NONE)
    assert fb.refusal(pending, K.OPENED, 0, 1, False) is fb.Refusal.NOT_DELIVERED
    assert fb.refusal(pending, K.OPENED, 0, 1, True) is None
    assert fb.refusal(pending, K.CLICKED, 0, 1, False) is fb.Refusal.NOT_DELIVERED
    # Fates are believed of any relayed message.
    for kind in (K.DELIVERED, K.HARD_BOUNCE, K.SOFT_BOUNCE, K.EXPIRED):
        assert fb.refusal(pending, kind, 0, 0, False) is None


def test_what_time_may_mend_is_deferred() -> None:
    assert {fb.Refusal.NOT_RELAYED, fb.Refusal.NOT_DELIVERED} == fb.DEFERRABLE
    assert fb.EVENT_TIME_MARGIN_SECONDS == 300


def test_open_and_click_percent_never_exceed_100() -> None:
    from delivery_service.domain import kpis

    counters = kpis.Counters(relayed=10, delivered=2, hard_bounced=8)
    got = kpis.compute(
        fb.FeedbackMode.EFS, 10, counters, opened_at_stats=5, clicked_at_stats=3,
        stats_time=None, final=False,
    )  # fmt: skip
    assert (got.open_percent, got.click_percent) == (100.0, 100.0)
    assert (got.opened, got.clicked) == (5, 3)
