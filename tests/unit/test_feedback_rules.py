"""SPEC.md's table, row by row, on the domain rules alone."""

from __future__ import annotations

import itertools

import pytest

from delivery_service.domain import feedback as fb
from delivery_service.domain.feedback import EventKind, FeedbackMode, Outcome, Status
from delivery_service.domain.kpis import Counters, compute

WITHOUT = FeedbackMode.WITHOUT_EFS
EFS = FeedbackMode.EFS


def message(mode: FeedbackMode, relayed: bool = True) -> fb.MessageState:
    return fb.MessageState(1, 1, mode, relayed, Outcome.NONE, 0, False, False)


def run(mode: FeedbackMode, kinds: list[EventKind]) -> tuple[fb.MessageState, dict[str, int]]:
    m = message(mode)
    deltas = fb.empty_deltas()
    deltas["relayed"] = 1
    for kind in kinds:
        fb.apply_event(m, kind, 2, deltas)
    return m, deltas


def percents(mode: FeedbackMode, deltas: dict[str, int]) -> tuple[float, float]:
    k = compute(
        mode,
        1,
        Counters(**deltas),
        opened_at_stats=0,
        clicked_at_stats=0,
        stats_time=None,
        final=False,
    )
    return k.delivered_percent, k.bounces_percent


# (events so far, status without EFS, % without EFS, status with EFS, % with EFS)
TABLE = [
    ([], Status.SENT, (100.0, 0.0), Status.PENDING, (0.0, 0.0)),
    ([EventKind.DELIVERED], Status.SENT, (100.0, 0.0), Status.SENT, (100.0, 0.0)),
    ([EventKind.HARD_BOUNCE], Status.FAILED, (0.0, 100.0), Status.FAILED, (0.0, 100.0)),
    ([EventKind.SOFT_BOUNCE], Status.SENT, (100.0, 0.0), Status.FAILED, (0.0, 100.0)),
    (
        [EventKind.SOFT_BOUNCE, EventKind.DELIVERED],
        Status.SENT,
        (100.0, 0.0),
        Status.SENT,
        (100.0, 0.0),
    ),
    (
        [EventKind.SOFT_BOUNCE, EventKind.SOFT_BOUNCE, EventKind.EXPIRED],
        Status.FAILED,
        (0.0, 100.0),
        Status.FAILED,
        (0.0, 100.0),
    ),
]


@pytest.mark.parametrize(("kinds", "status", "pct", "efs_status", "efs_pct"), TABLE)
def test_spec_table(
    kinds: list[EventKind],
    status: Status,
    pct: tuple[float, float],
    efs_status: Status,
    efs_pct: tuple[float, float],
) -> None:
    m, deltas = run(WITHOUT, kinds)
    assert fb.status_of(WITHOUT, m.relayed, m.outcome) is status
    assert percents(WITHOUT, deltas) == pct
    m, deltas = run(EFS, kinds)
    assert fb.status_of(EFS, m.relayed, m.outcome) is efs_status
    assert percents(EFS, deltas) == efs_pct


def test_queued_before_relay() -> None:
    assert fb.status_of(EFS, False, Outcome.NONE) is Status.QUEUED
    assert fb.status_of(WITHOUT, False, Outcome.NONE) is Status.QUEUED


@pytest.mark.parametrize("mode", [WITHOUT, EFS])
def test_any_order_and_duplicates_give_the_same_fate(mode: FeedbackMode) -> None:
    events = [EventKind.SOFT_BOUNCE, EventKind.SOFT_BOUNCE, EventKind.DELIVERED, EventKind.OPENED]
    results = set()
    for order in itertools.permutations(events + events[:2]):
        m, deltas = run(mode, list(order))
        results.add((m.row(), tuple(sorted(deltas.items()))))
    assert len(results) == 1


def test_failure_details() -> None:
    m, _ = run(EFS, [EventKind.SOFT_BOUNCE])
    assert m.row()[3:5] == (fb.FailureType.SOFT, 2)
    m, _ = run(WITHOUT, [EventKind.SOFT_BOUNCE])
    assert m.row()[3:5] == (fb.FailureType.NONE, 0)
    m, _ = run(WITHOUT, [EventKind.HARD_BOUNCE])
    assert m.row()[3:5] == (fb.FailureType.HARD, 2)
    m, _ = run(EFS, [EventKind.EXPIRED])
    assert m.row()[3:5] == (fb.FailureType.SOFT, fb.REASON_EXPIRED)


def test_expiry_gives_every_message_a_final_status() -> None:
    assert fb.expiry_outcome(WITHOUT, True, Outcome.SOFT_BOUNCED) is Outcome.EXPIRED
    assert fb.expiry_outcome(WITHOUT, True, Outcome.NONE) is Outcome.NONE  # stays SENT
    assert fb.expiry_outcome(EFS, True, Outcome.NONE) is Outcome.EXPIRED
    assert fb.expiry_outcome(EFS, False, Outcome.NONE) is Outcome.EXPIRED
    assert fb.expiry_outcome(EFS, True, Outcome.DELIVERED) is Outcome.DELIVERED


def test_opens_and_clicks_count_each_message_once() -> None:
    m, deltas = run(EFS, [EventKind.CLICKED, EventKind.OPENED, EventKind.CLICKED])
    assert (deltas["opened"], deltas["clicked"]) == (1, 1)
    assert m.opened and m.clicked


def test_feedback_before_relay_ack_counts_the_relay_once() -> None:
    m = message(EFS, relayed=False)
    deltas = fb.empty_deltas()
    fb.apply_event(m, EventKind.DELIVERED, 0, deltas)
    fb.apply_event(m, EventKind.OPENED, 0, deltas)
    assert deltas["relayed"] == 1 and m.relayed


def test_row_holds_the_sending_log_columns() -> None:
    m = message(WITHOUT)
    none = fb.FailureType.NONE
    assert m.row() == (1, Status.SENT, Outcome.NONE, none, 0, False, False, False)
    m = message(EFS, relayed=False)
    assert m.row() == (1, Status.QUEUED, Outcome.NONE, none, 0, False, False, False)
    m, _ = run(EFS, [EventKind.DELIVERED, EventKind.COMPLAINT])
    assert m.row() == (1, Status.SENT, Outcome.DELIVERED, none, 0, False, False, True)
    m, _ = run(EFS, [EventKind.HARD_BOUNCE, EventKind.CLICKED])
    hard = fb.FailureType.HARD
    assert m.row() == (1, Status.FAILED, Outcome.HARD_BOUNCED, hard, 2, True, True, False)


def test_apply_event_says_whether_the_message_changed() -> None:
    m = message(EFS, relayed=False)
    deltas = fb.empty_deltas()
    # The relay acknowledgement overtaken: a change even for an event that moves nothing.
    assert fb.apply_event(m, EventKind.SOFT_BOUNCE, 3, deltas) is True
    assert fb.apply_event(m, EventKind.SOFT_BOUNCE, 3, deltas) is False
    assert fb.apply_event(m, EventKind.OPENED, 0, deltas) is True
    assert fb.apply_event(m, EventKind.OPENED, 0, deltas) is False
    assert fb.apply_event(m, EventKind.CLICKED, 0, deltas) is True
    assert fb.apply_event(m, EventKind.CLICKED, 0, deltas) is False
    assert fb.apply_event(m, EventKind.DELIVERED, 0, deltas) is True
    assert fb.apply_event(m, EventKind.DELIVERED, 0, deltas) is False
    # An outcome below the current one changes nothing.
    assert fb.apply_event(m, EventKind.SOFT_BOUNCE, 1, deltas) is False
    assert (m.outcome, m.bounce_reason) == (Outcome.DELIVERED, 3)
    # A message that expired unrelayed, then reported late: only the relay is news.
    m = fb.MessageState(1, 1, EFS, False, Outcome.EXPIRED, 0, False, False)
    deltas = fb.empty_deltas()
    assert fb.apply_event(m, EventKind.DELIVERED, 0, deltas) is True
    assert (m.relayed, m.outcome, deltas["relayed"]) == (True, Outcome.EXPIRED, 1)
    m = message(EFS, relayed=False)
    assert fb.apply_event(m, EventKind.CLICKED, 0, fb.empty_deltas()) is True
    m = message(EFS, relayed=False)
    assert fb.apply_event(m, EventKind.OPENED, 0, fb.empty_deltas()) is True


def test_an_open_is_not_a_click() -> None:
    m, deltas = run(EFS, [EventKind.OPENED])
    assert (m.opened, m.clicked, deltas["opened"], deltas["clicked"]) == (True, False, 1, 0)


def test_a_repeated_bounce_keeps_the_lowest_reason() -> None:
    m = message(EFS)
    deltas = fb.empty_deltas()
    assert fb.apply_event(m, EventKind.SOFT_BOUNCE, 4, deltas) is True
    assert fb.apply_event(m, EventKind.SOFT_BOUNCE, 2, deltas) is True
    assert m.bounce_reason == 2
    assert fb.apply_event(m, EventKind.SOFT_BOUNCE, 2, deltas) is False
    assert fb.apply_event(m, EventKind.SOFT_BOUNCE, 3, deltas) is False
    assert m.bounce_reason == 2
    assert deltas["soft_bounced"] == 1
    # A delivery report keeps the reason of the bounce it superseded; repeating it with
    # a lower reason (delivery reports carry none) changes nothing.
    assert fb.apply_event(m, EventKind.DELIVERED, 0, deltas) is True
    assert fb.apply_event(m, EventKind.DELIVERED, 0, deltas) is False
    assert (m.outcome, m.bounce_reason) == (Outcome.DELIVERED, 2)


def test_deltas_add_up_over_a_batch_of_messages() -> None:
    deltas = fb.empty_deltas()
    for message_id in (1, 2, 3):
        m = fb.MessageState(message_id, 1, EFS, False, Outcome.NONE, 0, False, False)
        fb.apply_event(m, EventKind.DELIVERED, 0, deltas)
        fb.apply_event(m, EventKind.CLICKED, 0, deltas)
    assert deltas == fb.empty_deltas() | {"relayed": 3, "delivered": 3, "opened": 3, "clicked": 3}


def test_move_outcome_moves_one_message_between_buckets() -> None:
    deltas = fb.empty_deltas() | {"soft_bounced": 5, "delivered": 7}
    m = fb.MessageState(1, 1, EFS, True, Outcome.SOFT_BOUNCED, 2, False, False)
    fb.move_outcome(m, Outcome.DELIVERED, deltas)
    assert m.outcome is Outcome.DELIVERED
    assert deltas == fb.empty_deltas() | {"soft_bounced": 4, "delivered": 8}
    fb.move_outcome(m, Outcome.HARD_BOUNCED, deltas)
    assert deltas == fb.empty_deltas() | {"soft_bounced": 4, "delivered": 7, "hard_bounced": 1}
    m = message(EFS)
    fb.move_outcome(m, Outcome.EXPIRED, deltas)
    assert deltas["expired"] == 1 and sum(deltas.values()) == 4 + 7 + 1 + 1
