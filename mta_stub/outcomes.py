"""The stub's record of outcomes (GetOutcomes): what each event it reports counts for.

Pure Python; the spool keeps the record, changed in the transaction of what it counts.

Each message is counted once in accepted and, once its fate is decided, once in
delivered, hard_bounced or expired; until then it is in flight. A message whose delivery
report is followed by a late hard bounce has its fate decided by the bounce: it stays in
flight until the bounce is reported, then counts as hard bounced (and late bounced),
never as delivered.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields

from mta_stub.scenarios import Event, EventKind

# Outcome records and their changes are per (owner, delivery_id).
Key = tuple[int, int]


@dataclass(slots=True)
class Outcomes:
    """The stub's record of one delivery, or of all; each message counted once.

    The fields after unacknowledged_events are the stub's own: mta.v1.GetOutcomesResponse
    has no fields for them (yet), so GetOutcomes leaves them out.
    """

    accepted: int = 0
    duplicates: int = 0
    delivered: int = 0
    hard_bounced: int = 0
    soft_bounced: int = 0
    expired: int = 0
    opened: int = 0
    clicked: int = 0
    in_flight: int = 0
    unacknowledged_events: int = 0
    # Messages with a complaint, a hard bounce after their delivery report (counted in
    # hard_bounced too), an ignored auto-reply.
    complained: int = 0
    late_bounced: int = 0
    ignored: int = 0

    def add(self, other: Outcomes) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def delta(deltas: dict[Key, Outcomes], key: Key) -> Outcomes:
    """The change of one record in deltas, added at the first need."""
    counts = deltas.get(key)
    if counts is None:
        counts = deltas[key] = Outcomes()
    return counts


def tally(
    deltas: dict[Key, Outcomes], owner: int, events: list[Event], late: frozenset[int] | set[int]
) -> None:
    """Counts an owner's new events in deltas: each message once, whatever its events.

    late holds the messages (by id) whose fate is a late hard bounce: their delivery report
    decides nothing, their hard bounce is late.
    """
    # Grouped first: a batch has thousands of events but few deliveries and kinds.
    if late:
        groups = Counter(
            (event.delivery_id, event.kind, event.attempt == 1, event.message_id in late)
            for event in events
        )
    else:
        groups = Counter(
            (event.delivery_id, event.kind, event.attempt == 1, False) for event in events
        )
    for (delivery_id, kind, first_attempt, is_late), n in groups.items():
        counts = delta(deltas, (owner, delivery_id))
        counts.unacknowledged_events += n
        if kind is EventKind.DELIVERED:
            if not is_late:
                counts.in_flight -= n
                counts.delivered += n
        elif kind is EventKind.HARD_BOUNCE:
            counts.in_flight -= n
            counts.hard_bounced += n
            if is_late:
                counts.late_bounced += n
        elif kind is EventKind.EXPIRED:
            counts.in_flight -= n
            counts.expired += n
        elif kind is EventKind.SOFT_BOUNCE:
            # Counts messages, not bounces: every soft-bouncing message has an attempt 1.
            if first_attempt:
                counts.soft_bounced += n
        elif kind is EventKind.OPENED:
            counts.opened += n
        elif kind is EventKind.CLICKED:
            counts.clicked += n
        elif kind is EventKind.COMPLAINT:
            counts.complained += n
        else:
            counts.ignored += n
