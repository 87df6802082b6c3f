"""Feedback from the MTA, turned into sending-log statuses: SPEC.md's table, in both modes.

A message's fate is the strongest outcome reported for it so far. Outcomes only
move up (none < soft bounced < delivered < expired < hard bounced), so applying
the same event twice, or events in any order, ends in the same fate.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FeedbackMode(enum.StrEnum):
    WITHOUT_EFS = "WITHOUT_EFS"
    EFS = "EFS"


class Outcome(enum.IntEnum):
    NONE = 0
    SOFT_BOUNCED = 1
    DELIVERED = 2
    EXPIRED = 3
    HARD_BOUNCED = 4


class Status(enum.IntEnum):
    """Sending-log statuses; the values are delivery.v1.SendingStatus's."""

    QUEUED = 1
    PENDING = 2
    SENT = 3
    FAILED = 4


class FailureType(enum.IntEnum):
    """The values are delivery.v1.FailureType's."""

    NONE = 0
    HARD = 1
    SOFT = 2
    # A reply the sender ignores (an auto-reply): never a message's failure.
    IGNORED = 3


class EventKind(enum.IntEnum):
    """The values are mta.v1.EventKind's."""

    DELIVERED = 1
    HARD_BOUNCE = 2
    SOFT_BOUNCE = 3
    EXPIRED = 4
    OPENED = 5
    CLICKED = 6
    # The recipient marked the delivered message as spam.
    COMPLAINT = 7
    # An auto-reply: logged, changes nothing.
    IGNORED = 8


class FailureReason(enum.IntEnum):
    """The values are delivery.v1.FailureReason's; all but EXPIRED are also
    mta.v1.BounceReason's."""

    NONE = 0
    USER_UNKNOWN = 1
    MAILBOX_FULL = 2
    INVALID_DOMAIN = 3
    REFUSED = 4
    UNREACHABLE = 5
    EXPIRED = 6
    ACCOUNT_DISABLED = 7
    NOT_DEFINED = 8
    AUTO_REPLY = 9


BOUNCES = frozenset({Outcome.SOFT_BOUNCED, Outcome.HARD_BOUNCED})

# Opens and clicks: they report engagement, not a fate. A click implies an open.
ENGAGEMENTS = frozenset({EventKind.OPENED, EventKind.CLICKED})
# What only a delivered message can have: engagement, and a complaint.
AFTER_DELIVERY = ENGAGEMENTS | {EventKind.COMPLAINT}

# The MTA's bounce reasons: every failure reason but expiry, which the service decides.
REASON_EXPIRED = FailureReason.EXPIRED
MTA_BOUNCE_REASONS = frozenset(
    int(r) for r in FailureReason if r not in (FailureReason.NONE, REASON_EXPIRED)
)

_OUTCOME_OF_KIND = {
    EventKind.DELIVERED: Outcome.DELIVERED,
    EventKind.HARD_BOUNCE: Outcome.HARD_BOUNCED,
    EventKind.SOFT_BOUNCE: Outcome.SOFT_BOUNCED,
    EventKind.EXPIRED: Outcome.EXPIRED,
}


def outcome_of(kind: EventKind) -> Outcome | None:
    """The outcome an event reports; None for opens and clicks."""
    return _OUTCOME_OF_KIND.get(kind)


def status_of(mode: FeedbackMode, relayed: bool, outcome: Outcome) -> Status:
    """The sending-log status of a message (SPEC.md's table)."""
    if outcome is Outcome.NONE and not relayed:
        return Status.QUEUED
    if outcome in (Outcome.HARD_BOUNCED, Outcome.EXPIRED):
        return Status.FAILED
    if mode is FeedbackMode.WITHOUT_EFS:
        # Sent from the relay on; a soft bounce is retried and changes nothing yet.
        return Status.SENT
    if outcome is Outcome.DELIVERED:
        return Status.SENT
    if outcome is Outcome.SOFT_BOUNCED:
        return Status.FAILED
    return Status.PENDING


def failure_type_of(mode: FeedbackMode, outcome: Outcome) -> FailureType:
    if outcome is Outcome.HARD_BOUNCED:
        return FailureType.HARD
    if outcome is Outcome.EXPIRED or (outcome is Outcome.SOFT_BOUNCED and mode is FeedbackMode.EFS):
        return FailureType.SOFT
    return FailureType.NONE


def failure_reason_of(mode: FeedbackMode, outcome: Outcome, bounce_reason: int) -> int:
    if failure_type_of(mode, outcome) is FailureType.NONE:
        return 0
    if outcome is Outcome.EXPIRED:
        return REASON_EXPIRED
    return bounce_reason


def expiry_outcome(mode: FeedbackMode, relayed: bool, outcome: Outcome) -> Outcome:
    """The fate of a message when its validity ends: every message then has a final status.

    A soft-bounced message was never delivered: it expired. With EFS a message
    never reported is not known delivered, so it expires too; without EFS it
    stays sent. A message never relayed expires.
    """
    if outcome is Outcome.SOFT_BOUNCED or not relayed:
        return Outcome.EXPIRED
    if outcome is Outcome.NONE and mode is FeedbackMode.EFS:
        return Outcome.EXPIRED
    return outcome


class Refusal(enum.StrEnum):
    """Why an event from the MTA is not believed (it does not fit the relay record)."""

    DELIVERY_STATE = "delivery_state"  # its delivery is not sending, sent or finished
    PAST_RETENTION = "past_retention"  # its delivery's event log was pruned (retention)
    NOT_RELAYED = "not_relayed"  # its message was not relayed (yet)
    EVENT_TIME = "event_time"  # before its relay (minus a margin) or in the future
    LINK_INDEX = "link_index"  # a click on a link the content does not have
    NOT_DELIVERED = "not_delivered"  # an open, click or complaint of a message not delivered (yet)
    EVENTS_PER_BATCH = "events_per_batch"  # beyond the events a batch may carry
    EVENTS_PER_MESSAGE = "events_per_message"  # beyond the events logged per message


# What time may mend: a relay acknowledged but not recorded yet, a delivery report
# that an open overtook. Such events wait, unacknowledged, before they are refused.
DEFERRABLE = frozenset({Refusal.NOT_RELAYED, Refusal.NOT_DELIVERED})
# The most feedback events logged for one message: a real one has a handful (a report,
# a few retries, an open, a click, a late bounce); a peer flooding one message is refused.
MAX_EVENTS_PER_MESSAGE = 50
# How far an event's time may be before its message's relay, or after now.
EVENT_TIME_MARGIN_SECONDS = 300


def engageable(mode: FeedbackMode, outcome: Outcome) -> bool:
    """Whether an open, a click or a complaint is believed of a message with this fate:
    only of one delivered (with EFS, reported delivered; without, not failed)."""
    if mode is FeedbackMode.EFS:
        return outcome is Outcome.DELIVERED
    return outcome not in (Outcome.HARD_BOUNCED, Outcome.EXPIRED)


def refusal(
    message: MessageState, kind: EventKind, link_index: int, links: int, delivered_in_batch: bool
) -> Refusal | None:
    """Why an event about a message of a sending, sent or finished delivery is not
    believed, or None (the event's time is checked by the caller)."""
    if not message.relayed:
        return Refusal.NOT_RELAYED
    if kind is EventKind.CLICKED and not 0 <= link_index < links:
        return Refusal.LINK_INDEX
    if kind in AFTER_DELIVERY and not (
        delivered_in_batch or engageable(message.mode, message.outcome)
    ):
        return Refusal.NOT_DELIVERED
    return None


@dataclass
class MessageState:
    """What the sending log holds of one message, as feedback is folded into it."""

    message_id: int
    delivery_id: int
    mode: FeedbackMode
    relayed: bool
    outcome: Outcome
    bounce_reason: int
    opened: bool
    clicked: bool
    complained: bool = False

    def row(self) -> tuple[int, int, int, int, int, bool, bool, bool]:
        """The sending log's columns: id, status, outcome, failure type, reason, opened,
        clicked, complained."""
        return (
            self.message_id,
            status_of(self.mode, self.relayed, self.outcome),
            self.outcome,
            failure_type_of(self.mode, self.outcome),
            failure_reason_of(self.mode, self.outcome, self.bounce_reason),
            self.opened,
            self.clicked,
            self.complained,
        )


COUNTER_NAMES = (
    "relayed",
    "delivered",
    "soft_bounced",
    "hard_bounced",
    "expired",
    "opened",
    "clicked",
    "complained",
)

_BUCKET_OF_OUTCOME = {
    Outcome.SOFT_BOUNCED: "soft_bounced",
    Outcome.DELIVERED: "delivered",
    Outcome.EXPIRED: "expired",
    Outcome.HARD_BOUNCED: "hard_bounced",
}


def apply_event(
    message: MessageState, kind: EventKind, reason: int, deltas: dict[str, int]
) -> bool:
    """Folds one event into a message; adds the counter changes to deltas.

    Returns whether the message changed. `deltas` maps COUNTER_NAMES to increments.
    """
    changed = False
    if not message.relayed:
        # Feedback can overtake the relay acknowledgement: the MTA holds the message.
        message.relayed = True
        deltas["relayed"] += 1
        changed = True
    if kind is EventKind.COMPLAINT:
        if not message.complained:
            message.complained = True
            deltas["complained"] += 1
            changed = True
        return changed
    if kind in ENGAGEMENTS:
        if not message.opened:
            message.opened = True
            deltas["opened"] += 1
            changed = True
        if kind is EventKind.CLICKED and not message.clicked:
            message.clicked = True
            deltas["clicked"] += 1
            changed = True
        return changed
    new = outcome_of(kind)
    if new is None or new < message.outcome:
        return changed
    if new == message.outcome:
        # The same bounce reported again, maybe with another reason: the lowest reason
        # code stays, so that the fate does not depend on the order reports arrive in.
        if new in BOUNCES and reason < message.bounce_reason:
            message.bounce_reason = reason
            return True
        return changed
    move_outcome(message, new, deltas)
    if new in BOUNCES:
        message.bounce_reason = reason
    return True


def move_outcome(message: MessageState, new: Outcome, deltas: dict[str, int]) -> None:
    old_bucket = _BUCKET_OF_OUTCOME.get(message.outcome)
    if old_bucket:
        deltas[old_bucket] -= 1
    deltas[_BUCKET_OF_OUTCOME[new]] += 1
    message.outcome = new


def empty_deltas() -> dict[str, int]:
    return dict.fromkeys(COUNTER_NAMES, 0)
