"""The delivery event feed (docs/events.md): what each committed change of a delivery's
messages is called, where it comes from, and a position in the feed.

Each transaction that changes messages writes feed rows under its transaction id; a
position is (transaction id, row, item within the row). Rows are served in that order
and only below the oldest transaction still in flight, so a later commit never puts an
event behind a position already served.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from delivery_service.domain import feedback as fb


class FeedSource(enum.IntEnum):
    """What wrote a feed row (stored)."""

    RELAY = 1
    FEEDBACK = 2
    EXPIRY = 3


class EventKind(enum.IntEnum):
    """The values are delivery.v1.DeliveryEventKind's."""

    RELAYED = 1
    DELIVERED = 2
    HARD_BOUNCE = 3
    SOFT_BOUNCE = 4
    EXPIRED = 5
    OPENED = 6
    CLICKED = 7
    COMPLAINT = 8
    IGNORED = 9


def kind_of_feedback(kind: fb.EventKind) -> EventKind:
    """A feedback event's kind in the feed: the same name (an expiry the MTA reports
    is an expiry too)."""
    return EventKind[kind.name]


class Position(NamedTuple):
    """A place in the feed: after `item` (1-based) of row (xid, seq)."""

    xid: int
    seq: int
    item: int


START = Position(0, 0, 0)
