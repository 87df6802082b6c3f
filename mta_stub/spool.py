"""The stub's state: messages held, the retry schedule, and the feedback outbox.

Every change of state goes through Spool, so that a durable spool can replace
this in-memory one without touching the rest. State is kept compact for a
million messages: a message whose timeline is over leaves only its id behind
(for deduplication), a message with steps to come is one heap entry, and an
event is one tuple until the client acknowledges it.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import NamedTuple

from mta_stub.scenarios import Event, EventKind, Fate


class Scheduled(NamedTuple):
    """A message's next step. Ordered by due, then message_id (unique in the schedule)."""

    due: float
    message_id: int
    delivery_id: int
    expire_at: float
    fate: Fate
    kind: EventKind
    attempt: int


class Transition(NamedTuple):
    """An event that happens now, and the message's next step if any."""

    event: Event
    follow_up: Scheduled | None


@dataclass(slots=True)
class Outcomes:
    """The stub's record of one delivery, or of all; each message counted once."""

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

    def add(self, other: Outcomes) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Spool:
    """In-memory spool. Not thread-safe: used from one event loop."""

    def __init__(self) -> None:
        self._held: set[int] = set()
        self._schedule: list[Scheduled] = []
        # Events not handed to any stream yet, oldest first.
        self._outbox: deque[Event] = deque()
        # Per stream, the events of each feedback batch not acknowledged yet.
        self._sent: dict[int, dict[int, list[Event]]] = {}
        self._last_seq: dict[int, int] = {}
        self._stream_ids = itertools.count(1)
        self._outcomes: dict[int, Outcomes] = {}

    def accept(self, admissions: Iterable[Transition]) -> tuple[int, int]:
        """Holds each new message and records its first event; returns (accepted, duplicates).

        A message already held (earlier, or earlier in the same batch) is only counted.
        """
        accepted = duplicates = 0
        for event, follow_up in admissions:
            counts = self._counts(event.delivery_id)
            if event.message_id in self._held:
                duplicates += 1
                counts.duplicates += 1
                continue
            self._held.add(event.message_id)
            accepted += 1
            counts.accepted += 1
            counts.in_flight += 1
            self._record(event, counts)
            if follow_up is not None:
                heapq.heappush(self._schedule, follow_up)
        return accepted, duplicates

    def next_due(self) -> float | None:
        """When the earliest scheduled step is due, or None when nothing is scheduled."""
        return self._schedule[0].due if self._schedule else None

    def fire_due(self, now: float, limit: int, advance: Callable[[Scheduled], Transition]) -> int:
        """Fires up to limit steps due by now; advance turns each into its event and next step."""
        fired = 0
        schedule = self._schedule
        while fired < limit and schedule and schedule[0].due <= now:
            event, follow_up = advance(heapq.heappop(schedule))
            self._record(event, self._counts(event.delivery_id))
            if follow_up is not None:
                heapq.heappush(schedule, follow_up)
            fired += 1
        return fired

    def pending_count(self) -> int:
        """Events waiting to be handed to a stream."""
        return len(self._outbox)

    def open_stream(self) -> int:
        """Registers a feedback stream; returns its id."""
        stream = next(self._stream_ids)
        self._sent[stream] = {}
        self._last_seq[stream] = 0
        return stream

    def take_feedback(self, stream: int, limit: int) -> tuple[int, list[Event]]:
        """Hands up to limit waiting events to a stream as its next batch; returns (seq, events).

        The seq is allocated even when no event is left, for a batch of resent copies.
        """
        count = min(limit, len(self._outbox))
        events = [self._outbox.popleft() for _ in range(count)]
        seq = self._last_seq[stream] + 1
        self._last_seq[stream] = seq
        if events:
            self._sent[stream][seq] = events
        return seq, events

    def ack(self, stream: int, seq: int) -> int:
        """Forgets the events of a stream's batch for good; returns how many (0 if acked before)."""
        events = self._sent[stream].pop(seq, None)
        if events is None:
            return 0
        for event in events:
            self._counts(event.delivery_id).unacknowledged_events -= 1
        return len(events)

    def close_stream(self, stream: int) -> int:
        """Puts a closed stream's unacknowledged events back first in line; returns how many."""
        batches = self._sent.pop(stream)
        del self._last_seq[stream]
        requeued = 0
        # Newest batch first, each reversed, so that the outbox keeps the original order.
        for seq in sorted(batches, reverse=True):
            self._outbox.extendleft(reversed(batches[seq]))
            requeued += len(batches[seq])
        return requeued

    def outcomes(self, delivery_id: int) -> Outcomes:
        """A copy of one delivery's record, or of all deliveries' when delivery_id is 0."""
        total = Outcomes()
        if delivery_id:
            found = self._outcomes.get(delivery_id)
            if found is not None:
                total.add(found)
        else:
            for counts in self._outcomes.values():
                total.add(counts)
        return total

    def _counts(self, delivery_id: int) -> Outcomes:
        counts = self._outcomes.get(delivery_id)
        if counts is None:
            counts = self._outcomes[delivery_id] = Outcomes()
        return counts

    def _record(self, event: Event, counts: Outcomes) -> None:
        self._outbox.append(event)
        counts.unacknowledged_events += 1
        kind = event.kind
        if kind is EventKind.DELIVERED:
            counts.delivered += 1
            counts.in_flight -= 1
        elif kind is EventKind.HARD_BOUNCE:
            counts.hard_bounced += 1
            counts.in_flight -= 1
        elif kind is EventKind.EXPIRED:
            counts.expired += 1
            counts.in_flight -= 1
        elif kind is EventKind.SOFT_BOUNCE:
            # Counts messages, not bounces: every soft-bouncing message has an attempt 1.
            if event.attempt == 1:
                counts.soft_bounced += 1
        elif kind is EventKind.OPENED:
            counts.opened += 1
        elif kind is EventKind.CLICKED:
            counts.clicked += 1
