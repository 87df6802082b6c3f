"""What an address learns from feedback: SPEC.md's address table (VALID, ERRONEOUS,
QUARANTINED, DENYLISTED), as a fold over the address's events in time order.

An address's state is a function of the set of its events alone: they are folded in
(time, delivery, event id) order, whatever order they arrived in, so that duplicates
and reorders of the stream leave the same address table. Times are microseconds since
the Unix epoch, as the feedback stream gives them.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from delivery_service.domain import feedback as fb

DAY_MICROS = 86_400_000_000


class AddressStatus(enum.IntEnum):
    """The values are delivery.v1.AddressStatus's."""

    VALID = 1
    ERRONEOUS = 2
    QUARANTINED = 3
    DENYLISTED = 4


# Preparation drops these, with the drop reason of the same name.
EXCLUDED = frozenset({AddressStatus.QUARANTINED, AddressStatus.DENYLISTED})


class Signal(enum.IntEnum):
    """What an event says of its address."""

    DELIVERED = 1
    SOFT_ERROR = 2
    HARD_ERROR = 3
    COMPLAINT = 4
    # Changes by hand.
    RELEASE = 5
    QUARANTINE = 6
    DENYLIST = 7


_SIGNAL_OF_KIND = {
    fb.EventKind.DELIVERED: Signal.DELIVERED,
    fb.EventKind.SOFT_BOUNCE: Signal.SOFT_ERROR,
    fb.EventKind.HARD_BOUNCE: Signal.HARD_ERROR,
    fb.EventKind.COMPLAINT: Signal.COMPLAINT,
}
# What a change by hand sets an address to.
MANUAL_SIGNALS = {
    AddressStatus.VALID: Signal.RELEASE,
    AddressStatus.QUARANTINED: Signal.QUARANTINE,
    AddressStatus.DENYLISTED: Signal.DENYLIST,
}


def manual_event(status: AddressStatus, operator: str, time: int) -> AddressEvent:
    """A change by hand, as an event of the address's history (its own random id)."""
    return AddressEvent(
        time, 0, f"manual-{uuid.uuid4().hex}", MANUAL_SIGNALS[status], changed_by=operator
    )


def signal_of(kind: fb.EventKind) -> Signal | None:
    """What a feedback event says of its address; None for those that say nothing (opens,
    clicks, ignored replies; an expiry is the service's decision, not the MTA's)."""
    return _SIGNAL_OF_KIND.get(kind)


@dataclass(frozen=True)
class Rules:
    """The thresholds, Adobe's defaults; configurable (seconds in tests)."""

    # A soft error counts only this long after the last counted one.
    significant_interval: int = DAY_MICROS
    # The counted soft errors that quarantine an address.
    threshold: int = 5
    # ERRONEOUS goes back to VALID after this long without a counted error...
    release_after: int = 10 * DAY_MICROS
    # ... or this long when the last error was a full mailbox.
    mailbox_full_release_after: int = 30 * DAY_MICROS

    def release_time(self, state: AddressState) -> int | None:
        """When an ERRONEOUS address goes back to VALID by itself; None for other statuses."""
        if state.status is not AddressStatus.ERRONEOUS or state.last_error_time is None:
            return None
        full = state.failure_reason == fb.FailureReason.MAILBOX_FULL
        return state.last_error_time + (
            self.mailbox_full_release_after if full else self.release_after
        )


DEFAULT_RULES = Rules()

# Who made a change that no operator made.
BY_FEEDBACK = "feedback"
BY_CLEANUP = "cleanup"


class AddressEvent(NamedTuple):
    """One event of an address's history: feedback about a message sent to it, or a
    change by hand (delivery and message 0). A tuple: the ingest makes one per event."""

    time: int
    delivery_id: int
    event_id: str
    signal: Signal
    message_id: int = 0
    failure_type: int = 0
    failure_reason: int = 0
    smtp_code: int = 0
    smtp_status: str = ""
    smtp_text: str = ""
    changed_by: str = BY_FEEDBACK

    @property
    def key(self) -> tuple[int, int, str]:
        """The order events are folded in."""
        return (self.time, self.delivery_id, self.event_id)


_KEY = operator.itemgetter(0, 1, 2)  # AddressEvent.key, without a call per event


@dataclass(frozen=True)
class AddressState:
    """An address's entry: its status, the counted soft errors, and the last change's
    failure, reply, cause and time. The initial state is an address never seen."""

    status: AddressStatus = AddressStatus.VALID
    error_count: int = 0
    first_error_time: int | None = None
    last_error_time: int | None = None
    failure_type: int = 0
    failure_reason: int = 0
    smtp_code: int = 0
    smtp_status: str = ""
    smtp_text: str = ""
    delivery_id: int = 0
    message_id: int = 0
    update_time: int | None = None
    changed_by: str = ""


INITIAL = AddressState()


def _caused(state: AddressState, event: AddressEvent, **changes: object) -> AddressState:
    """The state with `changes`, the event recorded as the cause of the change."""
    return dataclasses.replace(
        state,
        delivery_id=event.delivery_id,
        message_id=event.message_id,
        update_time=event.time,
        changed_by=event.changed_by,
        **changes,  # type: ignore[arg-type]
    )


def _failed(state: AddressState, event: AddressEvent, **changes: object) -> AddressState:
    """The state after a counted failure: its type, reason and reply recorded too."""
    return _caused(
        state,
        event,
        failure_type=event.failure_type,
        failure_reason=event.failure_reason,
        smtp_code=event.smtp_code,
        smtp_status=event.smtp_status,
        smtp_text=event.smtp_text,
        **changes,
    )


def released_by_time(state: AddressState, now: int, rules: Rules) -> AddressState:
    """The state once the timed release due by `now` is applied (the cleanup round's
    rule, also applied before each later event so that the fold agrees with it)."""
    due = rules.release_time(state)
    if due is None or now < due:
        return state
    return dataclasses.replace(
        state,
        status=AddressStatus.VALID,
        error_count=0,
        # As after a success: the next error starts a count of its own.
        first_error_time=None,
        last_error_time=None,
        delivery_id=0,
        message_id=0,
        update_time=due,
        changed_by=BY_CLEANUP,
    )


def step(state: AddressState, event: AddressEvent, rules: Rules) -> AddressState:
    """One event folded into an address's state; the same state if it changes nothing."""
    state = released_by_time(state, event.time, rules)
    signal = event.signal
    if signal is Signal.RELEASE:
        return _caused(
            state,
            event,
            status=AddressStatus.VALID,
            error_count=0,
            first_error_time=None,
            last_error_time=None,
        )
    if signal is Signal.QUARANTINE:
        # Already out of targeting: a denylisted address is released before it is
        # quarantined instead.
        if state.status in EXCLUDED:
            return state
        return _caused(state, event, status=AddressStatus.QUARANTINED)
    if signal in (Signal.DENYLIST, Signal.COMPLAINT):
        if state.status is AddressStatus.DENYLISTED:
            return state
        return _caused(state, event, status=AddressStatus.DENYLISTED)
    if state.status in EXCLUDED:
        # Only a release (or a complaint) takes an address out of quarantine.
        return state
    if signal is Signal.DELIVERED:
        if state.status is not AddressStatus.ERRONEOUS:
            return state
        return _caused(
            state,
            event,
            status=AddressStatus.VALID,
            error_count=0,
            first_error_time=None,
            last_error_time=None,
        )
    if signal is Signal.SOFT_ERROR:
        last = state.last_error_time
        if last is not None and event.time - last < rules.significant_interval:
            return state
        count = state.error_count + 1
        return _failed(
            state,
            event,
            status=AddressStatus.QUARANTINED
            if count >= rules.threshold
            else AddressStatus.ERRONEOUS,
            error_count=count,
            first_error_time=state.first_error_time if last is not None else event.time,
            last_error_time=event.time,
        )
    # A hard error: quarantined at once.
    return _failed(
        state,
        event,
        status=AddressStatus.QUARANTINED,
        error_count=state.error_count + 1,
        first_error_time=event.time if state.first_error_time is None else state.first_error_time,
        last_error_time=event.time,
    )


def fold(
    state: AddressState, events: Iterable[AddressEvent], rules: Rules
) -> list[tuple[AddressEvent, AddressState | None]]:
    """Folds events (in any order) into a state: each event in key order, with the state
    after it, or None if it changed nothing."""
    ordered = sorted(events, key=_KEY)
    if state.status is not AddressStatus.ERRONEOUS and all(
        e.signal is Signal.DELIVERED for e in ordered
    ):
        # The common case, a delivery report to an address without errors: nothing
        # changes (no timed release is pending either), and no step needs making.
        return [(e, None) for e in ordered]
    folded = []
    for event in ordered:
        after = step(state, event, rules)
        folded.append((event, None if after == state else after))
        state = after
    return folded


@dataclass(frozen=True)
class AddressFilter:
    """Which address entries a listing or a bulk release takes; every field set must
    match. Times are microseconds since the epoch."""

    statuses: tuple[int, ...] = ()
    failure_reason: int = 0
    domain: str = ""
    error_text: str = ""
    changed_after: int | None = None
    changed_before: int | None = None
