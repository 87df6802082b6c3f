"""SPEC.md's address table (VALID, ERRONEOUS, QUARANTINED, DENYLISTED) on the domain
rules alone: what each feedback event and each change by hand does to an address, the
timed releases, and a fold that gives the same address whatever order its events come in.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delivery_service.domain import feedback as fb
from delivery_service.domain import quarantine as q
from delivery_service.domain.feedback import EventKind, FailureReason, FailureType
from delivery_service.domain.quarantine import (
    AddressEvent,
    AddressState,
    AddressStatus,
    Rules,
    Signal,
)

VALID = AddressStatus.VALID
ERRONEOUS = AddressStatus.ERRONEOUS
QUARANTINED = AddressStatus.QUARANTINED
DENYLISTED = AddressStatus.DENYLISTED

SECOND = 1_000_000
HOUR = 3_600 * SECOND
DAY = 24 * HOUR
# Microseconds since the Unix epoch, as the feedback stream gives them.
T0 = 1_750_000_000 * SECOND
DEFAULT = q.DEFAULT_RULES

_ids = itertools.count()


def _event(signal: Signal, time: int, delivery_id: int, **fields: object) -> AddressEvent:
    return AddressEvent(time, delivery_id, f"ev-{next(_ids):04}", signal, **fields)  # type: ignore[arg-type]


def soft(
    time: int,
    delivery_id: int = 7,
    reason: FailureReason = FailureReason.UNREACHABLE,
    message_id: int = 70,
) -> AddressEvent:
    return _event(
        Signal.SOFT_ERROR,
        time,
        delivery_id,
        message_id=message_id,
        failure_type=FailureType.SOFT,
        failure_reason=reason,
        smtp_code=451,
        smtp_status=f"4.{int(reason)}.1",
        smtp_text=f"451 try again later ({reason.name})",
    )


def hard(time: int, delivery_id: int = 8, message_id: int = 80) -> AddressEvent:
    return _event(
        Signal.HARD_ERROR,
        time,
        delivery_id,
        message_id=message_id,
        failure_type=FailureType.HARD,
        failure_reason=FailureReason.USER_UNKNOWN,
        smtp_code=550,
        smtp_status="5.1.1",
        smtp_text="550 5.1.1 user unknown",
    )


def delivered(time: int, delivery_id: int = 9, message_id: int = 90) -> AddressEvent:
    return _event(Signal.DELIVERED, time, delivery_id, message_id=message_id)


def complaint(time: int, delivery_id: int = 10, message_id: int = 100) -> AddressEvent:
    return _event(Signal.COMPLAINT, time, delivery_id, message_id=message_id)


def by_hand(signal: Signal, time: int, event_id: str, operator: str = "ops") -> AddressEvent:
    return AddressEvent(time, 0, event_id, signal, changed_by=operator)


def run(
    events: list[AddressEvent], rules: Rules = DEFAULT, state: AddressState = q.INITIAL
) -> AddressState:
    """The address's state once all of `events` are folded in."""
    for _, after in q.fold(state, events, rules):
        if after is not None:
            state = after
    return state


def counted_soft_errors(n: int, rules: Rules = DEFAULT, start: int = T0) -> list[AddressEvent]:
    """n soft errors, each one significant interval after the one before."""
    return [soft(start + i * rules.significant_interval, delivery_id=i + 1) for i in range(n)]


def state_with(status: AddressStatus) -> AddressState:
    """An address brought to `status` by feedback at T0."""
    events = {
        VALID: [],
        ERRONEOUS: [soft(T0)],
        QUARANTINED: [hard(T0)],
        DENYLISTED: [complaint(T0)],
    }[status]
    state = run(events)
    assert state.status is status
    return state


ALL_STATUSES = list(AddressStatus)


# Adobe's defaults and the starting point.


def test_the_default_rules_are_adobes_one_day_five_errors_ten_days_and_thirty_days() -> None:
    assert q.DAY_MICROS == 86_400 * SECOND
    assert Rules() == q.DEFAULT_RULES
    assert q.DEFAULT_RULES.significant_interval == DAY
    assert q.DEFAULT_RULES.threshold == 5
    assert q.DEFAULT_RULES.release_after == 10 * DAY
    assert q.DEFAULT_RULES.mailbox_full_release_after == 30 * DAY


def test_an_address_never_seen_is_valid_with_no_errors_and_no_change() -> None:
    assert (
        AddressState(
            status=VALID,
            error_count=0,
            first_error_time=None,
            last_error_time=None,
            update_time=None,
            changed_by="",
        )
        == q.INITIAL
    )


def test_preparation_excludes_exactly_the_quarantined_and_denylisted_addresses() -> None:
    assert {QUARANTINED, DENYLISTED} == q.EXCLUDED


def test_address_statuses_have_delivery_v1_values() -> None:
    assert [(s.name, int(s)) for s in AddressStatus] == [
        ("VALID", 1),
        ("ERRONEOUS", 2),
        ("QUARANTINED", 3),
        ("DENYLISTED", 4),
    ]


def test_an_event_from_feedback_is_changed_by_feedback_and_folds_in_time_delivery_id_order() -> (
    None
):
    event = AddressEvent(T0, 3, "e-1", Signal.DELIVERED)
    assert event.changed_by == q.BY_FEEDBACK == "feedback"
    assert event.key == (T0, 3, "e-1")
    assert (event.message_id, event.failure_type, event.failure_reason) == (0, 0, 0)
    assert (event.smtp_code, event.smtp_status, event.smtp_text) == (0, "", "")


# What a feedback event says of its address.

SIGNAL_OF_KIND = {
    EventKind.DELIVERED: Signal.DELIVERED,
    EventKind.HARD_BOUNCE: Signal.HARD_ERROR,
    EventKind.SOFT_BOUNCE: Signal.SOFT_ERROR,
    EventKind.COMPLAINT: Signal.COMPLAINT,
    # Engagement, an auto-reply and the service's own expiry say nothing of the address.
    EventKind.EXPIRED: None,
    EventKind.OPENED: None,
    EventKind.CLICKED: None,
    EventKind.IGNORED: None,
}


@pytest.mark.parametrize(("kind", "signal"), SIGNAL_OF_KIND.items())
def test_what_each_feedback_event_says_of_its_address(
    kind: fb.EventKind, signal: Signal | None
) -> None:
    assert q.signal_of(kind) is signal


def test_every_kind_of_feedback_event_is_accounted_for() -> None:
    assert set(SIGNAL_OF_KIND) == set(EventKind)


# A hard error.


def test_a_hard_error_quarantines_at_once_recording_its_failure_reply_and_cause() -> None:
    event = hard(T0 + 5, delivery_id=8, message_id=80)
    assert q.step(q.INITIAL, event, DEFAULT) == AddressState(
        status=QUARANTINED,
        error_count=1,
        first_error_time=T0 + 5,
        last_error_time=T0 + 5,
        failure_type=FailureType.HARD,
        failure_reason=FailureReason.USER_UNKNOWN,
        smtp_code=550,
        smtp_status="5.1.1",
        smtp_text="550 5.1.1 user unknown",
        delivery_id=8,
        message_id=80,
        update_time=T0 + 5,
        changed_by=q.BY_FEEDBACK,
    )


def test_a_hard_error_after_counted_soft_errors_adds_one_and_keeps_the_first_error_time() -> None:
    erroneous = run(counted_soft_errors(2))
    state = q.step(erroneous, hard(T0 + 3 * DAY), DEFAULT)
    assert state.status is QUARANTINED
    assert state.error_count == 3
    assert state.first_error_time == T0
    assert state.last_error_time == T0 + 3 * DAY
    assert state.failure_type == FailureType.HARD


def test_a_hard_error_quarantines_even_within_the_significant_interval() -> None:
    erroneous = run([soft(T0)])
    state = q.step(erroneous, hard(T0 + 1), DEFAULT)
    assert (state.status, state.error_count, state.last_error_time) == (QUARANTINED, 2, T0 + 1)


@pytest.mark.parametrize("status", [QUARANTINED, DENYLISTED])
def test_a_hard_error_on_an_excluded_address_changes_nothing(status: AddressStatus) -> None:
    state = state_with(status)
    assert q.step(state, hard(T0 + DAY), DEFAULT) == state


# Soft errors and the significant error interval.


def test_a_first_soft_error_counts_and_makes_the_address_erroneous() -> None:
    event = soft(T0, delivery_id=7, reason=FailureReason.MAILBOX_FULL, message_id=70)
    assert q.step(q.INITIAL, event, DEFAULT) == AddressState(
        status=ERRONEOUS,
        error_count=1,
        first_error_time=T0,
        last_error_time=T0,
        failure_type=FailureType.SOFT,
        failure_reason=FailureReason.MAILBOX_FULL,
        smtp_code=451,
        smtp_status="4.2.1",
        smtp_text="451 try again later (MAILBOX_FULL)",
        delivery_id=7,
        message_id=70,
        update_time=T0,
        changed_by=q.BY_FEEDBACK,
    )


def test_a_soft_error_exactly_one_significant_interval_after_the_last_counted_one_counts() -> None:
    first = run([soft(T0)])
    later = soft(T0 + DAY, delivery_id=12, reason=FailureReason.REFUSED, message_id=120)
    state = q.step(first, later, DEFAULT)
    assert state == dataclasses.replace(
        first,
        error_count=2,
        last_error_time=T0 + DAY,
        failure_reason=FailureReason.REFUSED,
        smtp_status="4.4.1",
        smtp_text="451 try again later (REFUSED)",
        delivery_id=12,
        message_id=120,
        update_time=T0 + DAY,
    )
    assert state.first_error_time == T0


def test_a_soft_error_one_microsecond_short_of_the_significant_interval_is_not_counted() -> None:
    first = run([soft(T0)])
    assert q.step(first, soft(T0 + DAY - 1, delivery_id=12), DEFAULT) == first


def test_a_repeated_soft_error_at_the_same_time_is_not_counted_twice() -> None:
    event = soft(T0)
    once = q.step(q.INITIAL, event, DEFAULT)
    assert q.step(once, event, DEFAULT) == once


def test_the_interval_runs_from_the_last_counted_error_not_from_an_uncounted_one() -> None:
    events = [
        soft(T0),
        soft(T0 + 12 * HOUR),  # not counted
        soft(T0 + DAY),  # counted: a day after the first
        soft(T0 + DAY + 20 * HOUR),  # not counted, though 32 hours after the uncounted one
        soft(T0 + 2 * DAY),  # counted
    ]
    after = [a for _, a in q.fold(q.INITIAL, events, DEFAULT)]
    assert [a is None for a in after] == [False, True, False, True, False]
    state = run(events)
    assert (state.error_count, state.first_error_time, state.last_error_time) == (
        3,
        T0,
        T0 + 2 * DAY,
    )


def test_the_significant_interval_is_configurable_down_to_seconds() -> None:
    rules = Rules(significant_interval=3 * SECOND)
    first = run([soft(T0)], rules)
    assert q.step(first, soft(T0 + 3 * SECOND - 1), rules) == first
    assert q.step(first, soft(T0 + 3 * SECOND), rules).error_count == 2


def test_four_counted_soft_errors_leave_the_address_erroneous_and_the_fifth_quarantines() -> None:
    events = counted_soft_errors(5)
    four = run(events[:4])
    assert (four.status, four.error_count) == (ERRONEOUS, 4)
    five = q.step(four, events[4], DEFAULT)
    assert (five.status, five.error_count) == (QUARANTINED, 5)
    assert (five.first_error_time, five.last_error_time) == (T0, T0 + 4 * DAY)
    assert (five.delivery_id, five.failure_type) == (5, FailureType.SOFT)


@pytest.mark.parametrize("threshold", [1, 2, 3, 7])
def test_the_threshold_th_counted_soft_error_quarantines_configurably(threshold: int) -> None:
    rules = Rules(significant_interval=SECOND, threshold=threshold)
    events = counted_soft_errors(threshold, rules)
    before = run(events[:-1], rules)
    assert before.error_count == threshold - 1
    assert before.status is (ERRONEOUS if threshold > 1 else VALID)
    after = q.step(before, events[-1], rules)
    assert (after.status, after.error_count) == (QUARANTINED, threshold)


@pytest.mark.parametrize("status", [QUARANTINED, DENYLISTED])
def test_a_soft_error_on_an_excluded_address_changes_nothing(status: AddressStatus) -> None:
    state = state_with(status)
    assert q.step(state, soft(T0 + 2 * DAY), DEFAULT) == state


# A successful delivery.


def test_a_success_brings_an_erroneous_address_back_to_valid_with_the_counter_at_zero() -> None:
    erroneous = run(counted_soft_errors(3))
    success = delivered(T0 + 2 * DAY + HOUR, delivery_id=9, message_id=90)
    assert q.step(erroneous, success, DEFAULT) == dataclasses.replace(
        erroneous,
        status=VALID,
        error_count=0,
        first_error_time=None,
        last_error_time=None,
        delivery_id=9,
        message_id=90,
        update_time=T0 + 2 * DAY + HOUR,
        changed_by=q.BY_FEEDBACK,
    )


def test_after_a_success_the_next_soft_error_starts_a_new_count_at_once() -> None:
    state = run([soft(T0), delivered(T0 + HOUR), soft(T0 + 2 * HOUR)])
    assert (state.status, state.error_count) == (ERRONEOUS, 1)
    assert state.first_error_time == state.last_error_time == T0 + 2 * HOUR


def test_after_a_success_a_hard_error_records_its_own_time_as_the_first_error() -> None:
    state = run([soft(T0), delivered(T0 + HOUR), hard(T0 + 2 * HOUR)])
    assert (state.status, state.error_count) == (QUARANTINED, 1)
    assert state.first_error_time == state.last_error_time == T0 + 2 * HOUR


@pytest.mark.parametrize("status", [VALID, QUARANTINED, DENYLISTED])
def test_a_success_changes_nothing_on_an_address_that_is_not_erroneous(
    status: AddressStatus,
) -> None:
    state = state_with(status)
    assert q.step(state, delivered(T0 + HOUR), DEFAULT) == state


# A complaint.


@pytest.mark.parametrize("status", [VALID, ERRONEOUS, QUARANTINED])
def test_a_complaint_denylists_the_address_from_any_status(status: AddressStatus) -> None:
    state = state_with(status)
    event = complaint(T0 + HOUR, delivery_id=10, message_id=100)
    assert q.step(state, event, DEFAULT) == dataclasses.replace(
        state,
        status=DENYLISTED,
        delivery_id=10,
        message_id=100,
        update_time=T0 + HOUR,
        changed_by=q.BY_FEEDBACK,
    )


def test_a_second_complaint_changes_nothing() -> None:
    denylisted = state_with(DENYLISTED)
    assert q.step(denylisted, complaint(T0 + DAY, delivery_id=11), DEFAULT) == denylisted


# Changes by hand.


def test_the_statuses_an_operator_can_set_are_valid_quarantined_and_denylisted() -> None:
    assert q.MANUAL_SIGNALS == {
        VALID: Signal.RELEASE,
        QUARANTINED: Signal.QUARANTINE,
        DENYLISTED: Signal.DENYLIST,
    }
    with pytest.raises(KeyError):
        q.manual_event(ERRONEOUS, "ops", T0)


@pytest.mark.parametrize(
    ("status", "signal"),
    [(VALID, Signal.RELEASE), (QUARANTINED, Signal.QUARANTINE), (DENYLISTED, Signal.DENYLIST)],
)
def test_a_change_by_hand_is_an_event_with_the_operator_and_no_delivery(
    status: AddressStatus, signal: Signal
) -> None:
    event = q.manual_event(status, "alice@ops", T0 + 42)
    assert event.signal is signal
    assert event.changed_by == "alice@ops"
    assert (event.time, event.delivery_id, event.message_id) == (T0 + 42, 0, 0)
    assert (event.failure_type, event.failure_reason, event.smtp_code) == (0, 0, 0)
    assert re.fullmatch("manual-[0-9a-f]{32}", event.event_id)


def test_each_change_by_hand_has_its_own_event_id() -> None:
    events = [q.manual_event(VALID, "ops", T0) for _ in range(20)]
    assert len({e.event_id for e in events}) == 20


@pytest.mark.parametrize("status", ALL_STATUSES)
def test_a_release_by_hand_makes_any_address_valid_with_the_counter_at_zero(
    status: AddressStatus,
) -> None:
    state = state_with(status)
    event = q.manual_event(VALID, "bob", T0 + DAY)
    assert q.step(state, event, DEFAULT) == dataclasses.replace(
        state,
        status=VALID,
        error_count=0,
        first_error_time=None,
        last_error_time=None,
        delivery_id=0,
        message_id=0,
        update_time=T0 + DAY,
        changed_by="bob",
    )


def test_after_a_release_by_hand_the_next_soft_error_counts_at_once() -> None:
    events = [hard(T0), by_hand(Signal.RELEASE, T0 + HOUR, "m-1"), soft(T0 + 2 * HOUR)]
    state = run(events)
    assert (state.status, state.error_count) == (ERRONEOUS, 1)
    assert state.first_error_time == T0 + 2 * HOUR


@pytest.mark.parametrize("status", [VALID, ERRONEOUS])
def test_quarantine_by_hand_of_a_targeted_address(status: AddressStatus) -> None:
    state = state_with(status)
    event = q.manual_event(QUARANTINED, "carol", T0 + DAY)
    assert q.step(state, event, DEFAULT) == dataclasses.replace(
        state,
        status=QUARANTINED,
        delivery_id=0,
        message_id=0,
        update_time=T0 + DAY,
        changed_by="carol",
    )


@pytest.mark.parametrize("status", [QUARANTINED, DENYLISTED])
def test_quarantine_by_hand_of_an_excluded_address_changes_nothing(status: AddressStatus) -> None:
    state = state_with(status)
    assert q.step(state, q.manual_event(QUARANTINED, "carol", T0 + DAY), DEFAULT) == state


@pytest.mark.parametrize("status", [VALID, ERRONEOUS, QUARANTINED])
def test_denylist_by_hand_from_any_other_status(status: AddressStatus) -> None:
    state = state_with(status)
    event = q.manual_event(DENYLISTED, "dave", T0 + DAY)
    assert q.step(state, event, DEFAULT) == dataclasses.replace(
        state,
        status=DENYLISTED,
        delivery_id=0,
        message_id=0,
        update_time=T0 + DAY,
        changed_by="dave",
    )


def test_denylist_by_hand_of_a_denylisted_address_changes_nothing() -> None:
    state = state_with(DENYLISTED)
    assert q.step(state, q.manual_event(DENYLISTED, "dave", T0 + DAY), DEFAULT) == state


# Timed releases.


def test_an_erroneous_address_is_due_for_release_ten_days_after_its_last_counted_error() -> None:
    state = run(counted_soft_errors(2))
    assert DEFAULT.release_time(state) == T0 + DAY + 10 * DAY


def test_a_full_mailbox_is_due_for_release_thirty_days_after_the_last_counted_error() -> None:
    state = run([soft(T0, reason=FailureReason.MAILBOX_FULL)])
    assert DEFAULT.release_time(state) == T0 + 30 * DAY


def test_the_last_counted_errors_reason_decides_the_release_delay() -> None:
    full_then_other = run(
        [soft(T0, reason=FailureReason.MAILBOX_FULL), soft(T0 + DAY, reason=FailureReason.REFUSED)]
    )
    assert DEFAULT.release_time(full_then_other) == T0 + DAY + 10 * DAY
    other_then_full = run(
        [soft(T0, reason=FailureReason.REFUSED), soft(T0 + DAY, reason=FailureReason.MAILBOX_FULL)]
    )
    assert DEFAULT.release_time(other_then_full) == T0 + DAY + 30 * DAY


def test_the_release_delays_are_configurable() -> None:
    rules = Rules(release_after=7 * SECOND, mailbox_full_release_after=11 * SECOND)
    assert rules.release_time(run([soft(T0)], rules)) == T0 + 7 * SECOND
    full = run([soft(T0, reason=FailureReason.MAILBOX_FULL)], rules)
    assert rules.release_time(full) == T0 + 11 * SECOND


@pytest.mark.parametrize("status", [VALID, QUARANTINED, DENYLISTED])
def test_only_an_erroneous_address_is_ever_released_by_time(status: AddressStatus) -> None:
    state = state_with(status)
    assert DEFAULT.release_time(state) is None
    assert q.released_by_time(state, T0 + 365 * DAY, DEFAULT) == state


def test_a_full_mailbox_that_was_quarantined_is_not_released_by_time() -> None:
    events = [soft(T0 + i * DAY, reason=FailureReason.MAILBOX_FULL) for i in range(5)]
    state = run(events)
    assert state.status is QUARANTINED
    assert DEFAULT.release_time(state) is None


def test_an_erroneous_entry_without_a_last_error_time_has_no_release_due() -> None:
    state = AddressState(status=ERRONEOUS, error_count=1)
    assert DEFAULT.release_time(state) is None
    assert q.released_by_time(state, T0, DEFAULT) == state


def test_a_timed_release_makes_the_address_valid_at_its_due_time_by_the_cleanup() -> None:
    erroneous = run(counted_soft_errors(3))
    due = T0 + 2 * DAY + 10 * DAY
    released = q.released_by_time(erroneous, due + 5 * DAY, DEFAULT)
    # As after a success, the error times go: the next error starts a count of its own.
    assert released == dataclasses.replace(
        erroneous,
        status=VALID,
        error_count=0,
        first_error_time=None,
        last_error_time=None,
        delivery_id=0,
        message_id=0,
        update_time=due,
        changed_by=q.BY_CLEANUP,
    )
    assert q.BY_CLEANUP == "cleanup"
    again = q.step(released, soft(due + DAY), DEFAULT)
    assert (again.error_count, again.first_error_time) == (1, due + DAY)


def test_a_timed_release_is_applied_exactly_at_its_due_time_and_not_a_microsecond_before() -> None:
    erroneous = run([soft(T0)])
    due = T0 + 10 * DAY
    assert q.released_by_time(erroneous, due - 1, DEFAULT) == erroneous
    assert q.released_by_time(erroneous, due, DEFAULT).status is VALID


def test_a_full_mailbox_is_not_released_after_ten_days_but_after_thirty() -> None:
    erroneous = run([soft(T0, reason=FailureReason.MAILBOX_FULL)])
    assert q.released_by_time(erroneous, T0 + 29 * DAY, DEFAULT) == erroneous
    released = q.released_by_time(erroneous, T0 + 30 * DAY, DEFAULT)
    assert (released.status, released.update_time) == (VALID, T0 + 30 * DAY)


def test_a_released_address_has_no_further_release_due() -> None:
    released = q.released_by_time(run([soft(T0)]), T0 + 10 * DAY, DEFAULT)
    assert DEFAULT.release_time(released) is None
    assert q.released_by_time(released, T0 + 100 * DAY, DEFAULT) == released


def test_a_due_release_is_applied_before_the_event_that_follows_it() -> None:
    four = run(counted_soft_errors(4))
    due = T0 + 3 * DAY + 10 * DAY
    # Without the release the fifth counted error would quarantine.
    state = q.step(four, soft(due, delivery_id=50), DEFAULT)
    assert (state.status, state.error_count, state.last_error_time) == (ERRONEOUS, 1, due)


def test_a_success_after_a_due_release_leaves_the_released_state() -> None:
    erroneous = run([soft(T0)])
    due = T0 + 10 * DAY
    state = q.step(erroneous, delivered(due + DAY), DEFAULT)
    assert state == q.released_by_time(erroneous, due, DEFAULT)
    assert (state.update_time, state.changed_by) == (due, q.BY_CLEANUP)


def test_a_release_not_yet_due_is_not_applied_before_an_event() -> None:
    four = run(counted_soft_errors(4))
    fifth = q.step(four, soft(T0 + 3 * DAY + 10 * DAY - 1), DEFAULT)
    assert (fifth.status, fifth.error_count) == (QUARANTINED, 5)


def test_an_uncounted_soft_error_does_not_postpone_the_timed_release() -> None:
    state = run([soft(T0), soft(T0 + 12 * HOUR, reason=FailureReason.MAILBOX_FULL)])
    assert DEFAULT.release_time(state) == T0 + 10 * DAY


# The fold: the same address whatever order its events arrive in.


def history() -> list[AddressEvent]:
    """An address's story, in key order, with the status after each event (None: no change)."""
    return [
        soft(T0, delivery_id=1),
        soft(T0 + 2 * HOUR, delivery_id=2),
        soft(T0 + DAY, delivery_id=3, reason=FailureReason.MAILBOX_FULL),
        delivered(T0 + 3 * DAY, delivery_id=4),
        soft(T0 + 3 * DAY + 1, delivery_id=5),
        hard(T0 + 3 * DAY + 1, delivery_id=6),
        delivered(T0 + 4 * DAY, delivery_id=7),
        complaint(T0 + 5 * DAY, delivery_id=8),
        complaint(T0 + 5 * DAY, delivery_id=9),
        by_hand(Signal.RELEASE, T0 + 6 * DAY, "manual-a"),
        by_hand(Signal.QUARANTINE, T0 + 6 * DAY, "manual-b"),
        soft(T0 + 7 * DAY, delivery_id=10),
        by_hand(Signal.RELEASE, T0 + 8 * DAY, "manual-c"),
        soft(T0 + 8 * DAY + 1, delivery_id=11),
        delivered(T0 + 9 * DAY, delivery_id=12),
        soft(T0 + 10 * DAY, delivery_id=13),
        soft(T0 + 20 * DAY, delivery_id=14),
    ]


STATUS_AFTER = [
    ERRONEOUS,
    None,
    ERRONEOUS,
    VALID,
    ERRONEOUS,
    QUARANTINED,
    None,
    DENYLISTED,
    None,
    VALID,
    QUARANTINED,
    None,
    VALID,
    ERRONEOUS,
    VALID,
    ERRONEOUS,
    ERRONEOUS,  # released by time at T0 + 20 days first, then counted again
]


def test_a_story_of_feedback_and_changes_by_hand_folds_as_the_spec_says() -> None:
    events = history()
    folded = q.fold(q.INITIAL, events, DEFAULT)
    assert [e for e, _ in folded] == events
    assert [a and a.status for _, a in folded] == STATUS_AFTER
    final = run(events)
    assert (final.error_count, final.last_error_time) == (1, T0 + 20 * DAY)


@pytest.mark.parametrize("seed", range(40))
def test_the_address_is_the_same_whatever_order_its_events_arrive_in(seed: int) -> None:
    events = history()
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)
    assert q.fold(q.INITIAL, shuffled, DEFAULT) == q.fold(q.INITIAL, events, DEFAULT)


def test_events_at_the_same_time_fold_in_delivery_id_then_event_id_order() -> None:
    release = by_hand(Signal.RELEASE, T0, "manual-b")
    quarantine = by_hand(Signal.QUARANTINE, T0, "manual-a")
    # Same time and delivery: the event id decides; quarantine then release.
    for events in ([release, quarantine], [quarantine, release]):
        assert [e for e, _ in q.fold(q.INITIAL, events, DEFAULT)] == [quarantine, release]
        assert run(events).status is VALID
    # Same time: the delivery id decides before the event id.
    success = AddressEvent(T0 + DAY, 2, "a", Signal.DELIVERED)
    failure = AddressEvent(T0 + DAY, 1, "b", Signal.SOFT_ERROR)
    for events in ([success, failure], [failure, success]):
        assert [e for e, _ in q.fold(q.INITIAL, events, DEFAULT)] == [failure, success]
        assert run(events).status is VALID
    # The time decides before the delivery id.
    early = AddressEvent(T0, 9, "z", Signal.SOFT_ERROR)
    late = AddressEvent(T0 + 1, 1, "a", Signal.DELIVERED)
    assert [e for e, _ in q.fold(q.INITIAL, [late, early], DEFAULT)] == [early, late]


def test_each_events_after_state_is_none_exactly_when_it_changed_nothing() -> None:
    state = q.INITIAL
    for event, after in q.fold(q.INITIAL, history(), DEFAULT):
        stepped = q.step(state, event, DEFAULT)
        if stepped == state:
            assert after is None
        else:
            assert after == stepped
        state = stepped


def test_the_fold_starts_from_the_given_state() -> None:
    quarantined = state_with(QUARANTINED)
    [(_, after)] = q.fold(quarantined, [delivered(T0 + DAY)], DEFAULT)
    assert after is None
    assert q.fold(q.INITIAL, [], DEFAULT) == []


def test_a_repeated_event_changes_the_address_at_most_once() -> None:
    for event in history():
        once = run([event])
        assert run([event, event]) == once


# Any history, generated.

SIGNALS = [Signal.DELIVERED, Signal.SOFT_ERROR, Signal.HARD_ERROR, Signal.COMPLAINT]


@st.composite
def address_events(draw: st.DrawFn) -> AddressEvent:
    signal = draw(st.sampled_from(list(Signal)))
    manual = signal not in SIGNALS
    reason = draw(st.sampled_from([FailureReason.MAILBOX_FULL, FailureReason.UNREACHABLE]))
    return AddressEvent(
        time=T0 + draw(st.integers(0, 40)) * 12 * HOUR,
        delivery_id=0 if manual else draw(st.integers(1, 3)),
        event_id=draw(st.sampled_from("abc")),
        signal=signal,
        failure_reason=reason if signal is Signal.SOFT_ERROR else 0,
        changed_by="ops" if manual else q.BY_FEEDBACK,
    )


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    st.lists(address_events(), max_size=25, unique_by=lambda e: e.key).flatmap(
        lambda events: st.tuples(st.just(events), st.permutations(events))
    )
)
def test_any_history_folds_to_the_same_address_in_any_order(
    histories: tuple[list[AddressEvent], list[AddressEvent]],
) -> None:
    events, arrived = histories
    folded = q.fold(q.INITIAL, arrived, DEFAULT)
    assert folded == q.fold(q.INITIAL, sorted(events, key=lambda e: e.key), DEFAULT)
    state = q.INITIAL
    for event, after in folded:
        stepped = q.step(state, event, DEFAULT)
        assert after == (None if stepped == state else stepped)
        state = stepped
        # The status table's invariants.
        assert (state.status is ERRONEOUS) <= (0 < state.error_count < DEFAULT.threshold)
        # Every change records its time: an entry without one never changed, which
        # is what lets the database record a delivery report to it without a fold.
        assert (after is None) or after.update_time is not None


@given(
    st.lists(address_events(), max_size=25, unique_by=lambda e: e.key),
    st.lists(st.integers(min_value=0, max_value=10 * DAY), max_size=5),
)
def test_delivery_reports_anywhere_in_a_history_that_never_changed_its_address_change_nothing(
    events: list[AddressEvent], times: list[int]
) -> None:
    """The rule record_delivery_reports applies in SQL: an address whose entry is the
    initial one (no event changed it) stays so whatever reports arrive, at any time."""
    if any(after is not None for _, after in q.fold(q.INITIAL, events, DEFAULT)):
        return
    reports = [delivered(T0 + t, delivery_id=i + 100) for i, t in enumerate(times)]
    assert all(after is None for _, after in q.fold(q.INITIAL, events + reports, DEFAULT))
