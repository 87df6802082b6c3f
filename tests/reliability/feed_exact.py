"""The event feed against the tables: what a reliability test checks after its faults,
beside scenario.assert_exact (docs/events.md names the event ids)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
from delivery.v1 import delivery_service_pb2 as pb

from delivery_service.domain import events as ev
from delivery_service.domain import feedback as fb
from tests.reliability import scenario


def listed(service: str, delivery_id: int) -> list[str]:
    """The delivery's event ids as ListDeliveryEvents serves them from the start of the
    feed, in order."""
    ids: list[str] = []
    after = ""
    while True:
        page = scenario.call(
            service,
            "ListDeliveryEvents",
            pb.ListDeliveryEventsRequest(delivery_id=delivery_id, after=after, page_size=5000),
        )
        ids += [e.event_id for e in page.events]
        after = page.next_cursor
        if page.caught_up:
            return ids


def committed_events(database_url: str, delivery_id: int) -> set[str]:
    """Every event the delivery's feed must hold, from the tables: each message relayed,
    each feedback event logged, each message the end of the validity expired."""
    with psycopg.connect(database_url, autocommit=True) as conn:

        def ids(query: str, *params: int) -> set[Any]:
            return {row[0] for row in conn.execute(query.encode(), (delivery_id, *params))}

        logged = ids("SELECT event_id FROM feedback_events WHERE delivery_id = %s")
        relayed = ids(
            "SELECT message_id FROM sending_logs WHERE delivery_id = %s AND relay_time IS NOT NULL"
        )
        # The end of the validity's expiries, as its own statement listed them.
        expired = ids(
            "SELECT unnest(message_ids) FROM delivery_feed WHERE delivery_id = %s AND source = %s",
            ev.FeedSource.EXPIRY,
        )
        outcome_expired = ids(
            "SELECT message_id FROM sending_logs WHERE delivery_id = %s AND outcome = %s",
            fb.Outcome.EXPIRED,
        )
        mta_expired = ids(
            "SELECT message_id FROM feedback_events WHERE delivery_id = %s AND kind = %s",
            fb.EventKind.EXPIRED,
        )
    # The end of the validity expires the messages still without a final fate: among
    # them every expired message the MTA never reported expired, and none of another fate.
    assert outcome_expired - mta_expired <= expired <= outcome_expired
    return (
        {f"feedback:{delivery_id}:{e}" for e in logged}
        | {f"relayed:{m}" for m in relayed}
        | {f"expired:{m}" for m in expired}
    )


def assert_feed_exact(database_url: str, service: str, delivery_id: int) -> int:
    """ListDeliveryEvents, from the start of the feed, holds every event of the delivery
    the tables hold (committed_events) exactly once, and nothing else. Returns how many
    events it served."""
    served = Counter(listed(service, delivery_id))
    twice = [event_id for event_id, n in served.items() if n > 1]
    assert not twice, f"{len(twice)} events served more than once, e.g. {twice[:3]}"
    expected = committed_events(database_url, delivery_id)
    missing = expected - served.keys()
    assert not missing, f"{len(missing)} events not in the feed, e.g. {sorted(missing)[:3]}"
    extra = served.keys() - expected
    assert not extra, f"{len(extra)} events in the feed and not in the tables: {sorted(extra)[:3]}"
    return len(served)
