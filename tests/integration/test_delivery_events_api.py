"""ListDeliveryEvents through the real pair: a consumer paging with the cursors it is
given gets every committed change of a delivery once, in feed order, from any cursor it
resumes at; kinds filter what comes back, not where the cursor goes; bad input is
INVALID_ARGUMENT or NOT_FOUND."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import grpc
import pytest
from delivery.v1 import delivery_service_pb2 as pb

from tests.integration import flows
from tests.integration.conftest import Pair

# The stub's patterns (mta_stub/scenarios.py): delivered, a hard bounce, soft bounces
# until the end of the validity, a complaint after the delivery report.
EXPIRED = pb.DELIVERY_EVENT_KIND_EXPIRED
EMAILS = ["ok@example.com", "hard@example.com", "soft-expire@example.com", "complaint@example.org"]


async def consume(
    pair: Pair,
    delivery_id: int,
    after: str = "",
    page_size: int = 2,
    kinds: tuple[pb.DeliveryEventKind.ValueType, ...] = (),
) -> tuple[list[pb.DeliveryEvent], str]:
    """Every event after a cursor, page by page; the cursor at the end."""
    got: list[pb.DeliveryEvent] = []
    while True:
        page = await pair.api.ListDeliveryEvents(
            pb.ListDeliveryEventsRequest(
                delivery_id=delivery_id, after=after, page_size=page_size, kinds=kinds
            ),
            timeout=30,
        )
        got += page.events
        after = page.next_cursor
        if page.caught_up:
            return got, after


async def test_a_consumer_gets_every_change_once_from_any_cursor(pair: Pair) -> None:
    delivery = await flows.send(pair, flows.request(EMAILS, validity_seconds=2))
    await flows.wait_state(pair, delivery.id, pb.STATE_FINISHED)
    logs = {s.message_id: s for s in await flows.logs(pair, delivery.id)}

    def committed() -> set[str]:
        """What the feed must hold, from the tables: the stub goes on reporting soft
        bounces after the end of the validity, each logged (and fed) as it comes."""
        logged = pair.sql(
            "SELECT event_id FROM feedback_events WHERE delivery_id = %s", delivery.id
        )
        return {f"relayed:{m}" for m in logs} | {f"feedback:{delivery.id}:{e}" for (e,) in logged}

    # The soft-bounced message expires at the end of the validity, unless the stub's own
    # expiry report came first: either way, the feed says once that it expired.
    expiring = {m for m, s in logs.items() if s.email.startswith("soft-expire")}

    deadline = asyncio.get_running_loop().time() + flows.TIMEOUT
    while True:
        expected = committed()
        events, end = await consume(pair, delivery.id)
        if {e.event_id for e in events} >= expected:
            break
        assert asyncio.get_running_loop().time() < deadline, expected - {e.event_id for e in events}
        await asyncio.sleep(0.2)
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids))
    assert set(ids) - committed() <= {f"expired:{m}" for m in expiring}
    for message_id in expiring:
        expired = [e for e in events if e.message_id == message_id and e.kind == EXPIRED]
        assert expired, "the end of the validity expired it, or the stub reported it"
    for event in events:
        assert event.delivery_id == delivery.id
        assert event.address == logs[event.message_id].email
        assert event.event_time.seconds > 0 and event.commit_time.seconds > 0
    hard = next(e for e in events if e.kind == pb.DELIVERY_EVENT_KIND_HARD_BOUNCE)
    assert hard.address == "hard@example.com" and hard.reason == pb.FAILURE_REASON_USER_UNKNOWN
    assert hard.smtp_reply.code == 550
    # Each message is relayed before anything is reported of it.
    for message_id in logs:
        kinds = [e.kind for e in events if e.message_id == message_id]
        assert kinds[0] == pb.DELIVERY_EVENT_KIND_RELAYED, kinds

    # Resuming from any event's cursor gives exactly the events after it.
    for i in (0, 3, len(events) - 1):
        rest, _ = await consume(pair, delivery.id, after=events[i].cursor, page_size=3)
        assert [e.event_id for e in rest] == ids[i + 1 :]
    # Caught up: nothing after the end, and the end is where it was.
    page = await pair.api.ListDeliveryEvents(
        pb.ListDeliveryEventsRequest(delivery_id=delivery.id, after=end), timeout=30
    )
    assert (list(page.events), page.next_cursor, page.caught_up) == ([], end, True)

    # Kinds filter what comes back; the cursor still moves past the rest.
    bounces, _ = await consume(
        pair, delivery.id, page_size=1,
        kinds=(pb.DELIVERY_EVENT_KIND_HARD_BOUNCE, pb.DELIVERY_EVENT_KIND_COMPLAINT),
    )  # fmt: skip
    assert [e.event_id for e in bounces] == [
        e.event_id
        for e in events
        if e.kind in (pb.DELIVERY_EVENT_KIND_HARD_BOUNCE, pb.DELIVERY_EVENT_KIND_COMPLAINT)
    ]
    assert {e.kind for e in bounces} == {
        pb.DELIVERY_EVENT_KIND_HARD_BOUNCE, pb.DELIVERY_EVENT_KIND_COMPLAINT
    }  # fmt: skip

    # Every delivery's feed holds this delivery's events in the same order.
    everything, _ = await consume(pair, 0, page_size=500)
    assert [e.event_id for e in everything if e.delivery_id == delivery.id] == ids


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListDeliveryEventsRequest(after="not a cursor"), "after"),
        (pb.ListDeliveryEventsRequest(after=cursor_of("f1:1:2")), "after"),
        (pb.ListDeliveryEventsRequest(after=cursor_of(f"f1:{2**64}:0:0")), "after"),
        (pb.ListDeliveryEventsRequest(after=cursor_of("f1:1:-2:0")), "after"),
        (pb.ListDeliveryEventsRequest(page_size=5001), "page_size"),
        (pb.ListDeliveryEventsRequest(page_size=-1), "page_size"),
        (
            pb.ListDeliveryEventsRequest(
                kinds=[pb.DELIVERY_EVENT_KIND_OPENED, pb.DeliveryEventKind.ValueType(42)]
            ),
            "kinds[1]",
        ),
        (pb.ListDeliveryEventsRequest(delivery_id=-3), "delivery_id"),
    ],
)
async def test_bad_requests_are_invalid_argument(
    pair: Pair, request_: pb.ListDeliveryEventsRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.api.ListDeliveryEvents(request_, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in refused.value.details()


async def test_an_unknown_delivery_is_not_found(pair: Pair) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.api.ListDeliveryEvents(
            pb.ListDeliveryEventsRequest(delivery_id=10**12), timeout=30
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_message_timeline_is_its_events_in_the_feed(pair: Pair) -> None:
    emails = ["soft-2@example.com", "ok@example.com"]
    delivery = await flows.send(pair, flows.request(emails, validity_seconds=5))
    await flows.wait_state(pair, delivery.id, pb.STATE_FINISHED)
    message_id = next(
        s.message_id for s in await flows.logs(pair, delivery.id) if s.email == emails[0]
    )
    feed, _ = await consume(pair, delivery.id, page_size=100)
    timeline = await pair.api.GetMessageTimeline(
        pb.GetMessageTimelineRequest(delivery_id=delivery.id, message_id=message_id), timeout=30
    )
    assert list(timeline.events) == [e for e in feed if e.message_id == message_id]
    kinds = [e.kind for e in timeline.events]
    assert kinds[0] == pb.DELIVERY_EVENT_KIND_RELAYED
    assert pb.DELIVERY_EVENT_KIND_SOFT_BOUNCE in kinds and pb.DELIVERY_EVENT_KIND_DELIVERED in kinds
    for request_, code in [
        (pb.GetMessageTimelineRequest(delivery_id=delivery.id, message_id=10**12), "NOT_FOUND"),
        (pb.GetMessageTimelineRequest(delivery_id=10**12, message_id=message_id), "NOT_FOUND"),
        (pb.GetMessageTimelineRequest(delivery_id=delivery.id), "INVALID_ARGUMENT"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pair.api.GetMessageTimeline(request_, timeout=30)
        assert refused.value.code().name == code


async def test_a_watch_streams_the_same_events_as_they_are_committed(pair: Pair) -> None:
    """A watch of every delivery from the end of the feed, opened before the delivery
    is created, and a watch of the delivery's own feed from its start, get exactly what
    ListDeliveryEvents pages, in the same order; a kinds filter keeps its kinds."""
    everything = pair.api.WatchDeliveryEvents(pb.WatchDeliveryEventsRequest(from_end=True))
    first = await everything.read()
    assert not first.events and first.cursor
    delivery = await flows.send(pair, flows.request(EMAILS, validity_seconds=2))
    own = pair.api.WatchDeliveryEvents(pb.WatchDeliveryEventsRequest(delivery_id=delivery.id))
    bounces = pair.api.WatchDeliveryEvents(
        pb.WatchDeliveryEventsRequest(kinds=[pb.DELIVERY_EVENT_KIND_HARD_BOUNCE])
    )
    await flows.wait_state(pair, delivery.id, pb.STATE_FINISHED)
    listed, _ = await consume(pair, delivery.id, page_size=100)

    async def read_until(call: Any, count: int) -> list[pb.DeliveryEvent]:
        got: list[pb.DeliveryEvent] = []
        async with asyncio.timeout(flows.TIMEOUT):
            while len(got) < count:
                got += (await call.read()).events
        return got

    try:
        assert await read_until(own, len(listed)) == listed
        streamed = await read_until(everything, len(listed))
        assert [e.event_id for e in streamed] == [e.event_id for e in listed]
        hard = await read_until(bounces, 1)
        assert [e.event_id for e in hard] == [
            e.event_id for e in listed if e.kind == pb.DELIVERY_EVENT_KIND_HARD_BOUNCE
        ]
    finally:
        for call in (everything, own, bounces):
            call.cancel()


async def test_a_watch_of_an_unknown_delivery_or_with_bad_input_is_refused(pair: Pair) -> None:
    for request_, code in [
        (pb.WatchDeliveryEventsRequest(delivery_id=10**12), grpc.StatusCode.NOT_FOUND),
        (pb.WatchDeliveryEventsRequest(after="x", from_end=True), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.WatchDeliveryEventsRequest(after="not a cursor"), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        call = pair.api.WatchDeliveryEvents(request_, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() == code
