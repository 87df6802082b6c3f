"""The event feed's cursors resume exactly (issue 12, docs/events.md).

During a 20,000-message delivery under the seeded mix, a consumer of the delivery's
feed is killed (its channel closed under its call) and resumed from the last cursor it
was given, 5 times; in the second test the service process it reads from is killed
with SIGKILL and it resumes on the other process of the same database. Either way, what
it received, in order, is the whole feed of the delivery listed afterwards, and that is
every event the tables hold: each feedback event logged, each message relayed, each
message the end of the validity expired. No event twice, not even at a resume point.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
import pytest
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from mta.v1 import mta_service_pb2 as mta

from delivery_service.domain import lifecycle
from mta_stub import presets
from tests.conftest import Servers
from tests.reliability import feed_exact, scenario
from tests.support.callers import interceptors
from tests.support.processes import ServerProcess, await_until

N = 20_000
VALIDITY = 20
RESUMES = 5
# Retries a second apart: the soft bounces until the validity ends are about 20 each.
STUB_ARGS = ("--retry-interval-ms", "1000", "--engagement-delay-ms", "100", *presets.stub_args())
SERVICE_ARGS = ("--finalize-grace", "2")
# What the relay and the feedback have committed to the feed so far.
COMMITTED = (
    "SELECT (SELECT count(*) FROM feedback_events)"
    " + (SELECT count(*) FROM sending_logs WHERE relay_time IS NOT NULL)"
)
# Whether the delivery is over.
OVER = f"SELECT count(*) FROM deliveries WHERE state = '{lifecycle.State.FINISHED}'"
# The consumer is killed each time it has received this many more events (while the
# relay and the first reports pour in, it is behind), the last time once it has all that
# is committed (in step with the feed's end), and resumed once this many more events are
# committed (or the delivery is over: a kill in step near its end may see fewer come):
# it catches up on its own from behind.
KILL_EVERY = 8_000
DOWN_FOR = 2_000
# A polling consumer's page and pause once caught up.
PAGE = 1_000
POLL = 0.2


@dataclass
class Consumer:
    """A consumer of one delivery's feed: what it received, in order, and the last cursor
    it was given, which is all it keeps from one session (one call) to the next."""

    delivery_id: int
    received: list[pb.DeliveryEvent] = field(default_factory=list)
    cursor: str = ""
    # Where each session started, as an index into `received`.
    resumed_at: list[int] = field(default_factory=list)
    # How many events the last message or page brought.
    last_batch: int = 0
    running: asyncio.Task[None] | None = None

    def take(self, events: Any, cursor: str) -> None:
        self.received += events
        self.cursor = cursor
        if events:
            self.last_batch = len(events)

    def forget_half_of_last_batch(self) -> None:
        """As a consumer that checkpoints after each event it handled, killed halfway
        through a page: it resumes from the last handled event's own cursor."""
        del self.received[len(self.received) - self.last_batch // 2 :]
        self.cursor = self.received[-1].cursor

    async def page(self, api: pb_grpc.DeliveryServiceStub) -> bool:
        """One ListDeliveryEvents page after the cursor; whether it was caught up."""
        page = await api.ListDeliveryEvents(
            pb.ListDeliveryEventsRequest(
                delivery_id=self.delivery_id, after=self.cursor, page_size=PAGE
            ),
            timeout=30,
        )
        self.take(page.events, page.next_cursor)
        return bool(page.caught_up)

    def resume(self, address: str, listing: bool = False) -> None:
        """A session from the cursor: pages of ListDeliveryEvents in a loop (listing), or
        a WatchDeliveryEvents stream, until killed or its call fails."""
        self.resumed_at.append(len(self.received))
        self.running = asyncio.create_task(self._session(address, listing))

    async def _session(self, address: str, listing: bool) -> None:
        metadata = interceptors(scenario.caller)
        async with grpc.aio.insecure_channel(address, interceptors=metadata) as channel:
            api = pb_grpc.DeliveryServiceStub(channel)
            while listing:
                if await self.page(api):
                    await asyncio.sleep(POLL)  # the poller's pause, not a wait
            request = pb.WatchDeliveryEventsRequest(delivery_id=self.delivery_id, after=self.cursor)
            async for message in api.WatchDeliveryEvents(request):
                self.take(message.events, message.cursor)

    async def kill(self) -> None:
        """Cancels the session: leaving the channel's block closes it under the call,
        as the consumer's crash would."""
        assert self.running is not None
        self.running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.running

    def check(self) -> None:
        """Raises the error of a session that failed: a wait on it fails at once."""
        assert self.running is not None
        if self.running.done():
            self.running.result()

    async def has(self, count: int) -> bool:
        self.check()
        return len(self.received) >= count


async def off_loop(function: Callable[..., Any], *args: Any) -> Any:
    """A blocking helper of scenario.py, in a thread: the consumer goes on meanwhile."""
    return await asyncio.to_thread(function, *args)


async def until(condition: Callable[[], Coroutine[Any, Any, bool]], what: str) -> None:
    await await_until(condition, 120, interval=0.05, message=what)


async def watched_delivery(
    database_url: str, service: ServerProcess, stub: ServerProcess
) -> Consumer:
    """A delivery of N messages under the seeded mix, sent through `service`, and a
    consumer watching its feed there from the start."""
    delivery_id = await off_loop(
        scenario.start_delivery, database_url, service.address, stub.address, N, VALIDITY,
        None, presets.SEEDED_MIX,
    )  # fmt: skip
    consumer = Consumer(delivery_id)
    consumer.resume(service.address)
    return consumer


async def finish(
    database_url: str, service: ServerProcess, stub: ServerProcess, consumer: Consumer
) -> float:
    """Waits until the delivery is FINISHED, the stub has nothing more to report and
    the consumer has received every event the tables hold, kills it and checks what it
    received (assert_every_event_once)."""
    delivery_id = consumer.delivery_id
    await off_loop(scenario.wait_finished, lambda: service.address, delivery_id)

    async def stub_done() -> bool:
        outcome = await off_loop(
            scenario.call_mta, stub.address, "GetOutcomes",
            mta.GetOutcomesRequest(delivery_id=delivery_id),
        )  # fmt: skip
        assert outcome.accepted == N, "every message relayed"
        return bool(outcome.in_flight == 0 and outcome.unacknowledged_events == 0)

    await until(stub_done, "the stub has nothing more to report")
    expected: set[str] = await off_loop(feed_exact.committed_events, database_url, delivery_id)

    async def all_received() -> bool:
        consumer.check()
        return {e.event_id for e in consumer.received} >= expected

    await until(all_received, "the consumer received every committed event")
    await consumer.kill()
    return await assert_every_event_once(service.address, consumer, expected)


async def assert_every_event_once(address: str, consumer: Consumer, expected: set[str]) -> float:
    """What the consumer received over all its sessions is the delivery's whole feed,
    listed now from its start, in order, and every event the tables hold. Returns how
    long the listing took (seconds)."""
    ids = [e.event_id for e in consumer.received]
    first: dict[str, int] = {}
    twice = [(first[x], i, x) for i, x in enumerate(ids) if first.setdefault(x, i) != i]
    assert not twice, (
        f"received twice (first index, second index, event id): {twice[:10]}; "
        f"sessions started at {consumer.resumed_at}"
    )
    listing = time.monotonic()
    whole = await off_loop(feed_exact.listed, address, consumer.delivery_id)
    listed = time.monotonic() - listing
    assert ids == whole
    assert set(ids) == expected
    return listed


async def test_a_consumer_killed_five_times_resumes_with_every_event_once(
    fresh_db_url: str, servers: Servers
) -> None:
    started = time.monotonic()
    stub = servers.mta_stub(*STUB_ARGS)
    service = servers.delivery_service(fresh_db_url, stub.address, *SERVICE_ARGS)
    consumer = await watched_delivery(fresh_db_url, service, stub)
    # When each kill came: events received / committed.
    kills: list[str] = []

    async def in_step() -> bool:
        return await consumer.has(await off_loop(scenario.count, fresh_db_url, COMMITTED))

    for k in range(1, RESUMES + 1):
        if k < RESUMES:
            await until(partial(consumer.has, k * KILL_EVERY), f"{k * KILL_EVERY} received")
        else:
            await until(in_step, "the consumer in step with the feed's end")
        await consumer.kill()
        if k % 2 == 0:
            consumer.forget_half_of_last_batch()
        at_kill = await off_loop(scenario.count, fresh_db_url, COMMITTED)
        kills.append(f"{time.monotonic() - started:.1f} s: {len(consumer.received)}/{at_kill}")

        async def moved_on(threshold: int = at_kill + DOWN_FOR) -> bool:
            committed = await off_loop(scenario.count, fresh_db_url, COMMITTED)
            return bool(
                committed >= threshold or await off_loop(scenario.count, fresh_db_url, OVER)
            )

        await until(moved_on, f"{DOWN_FOR} more events committed")
        # Watch and list in turn: a cursor of either resumes the other, and so does
        # an event's own cursor in the middle of a page.
        consumer.resume(service.address, listing=k % 2 == 1)
    listed = await finish(fresh_db_url, service, stub, consumer)
    expiries = sum(e.event_id.startswith("expired:") for e in consumer.received)
    print(
        f"\nfeed resume: {len(consumer.received)} events of {N} messages ({expiries} expiries "
        f"of the service) received once each over {RESUMES} kills (at {', '.join(kills)} "
        f"received/committed), {time.monotonic() - started:.1f} s; the whole feed listed "
        f"again in {listed:.1f} s"
    )


async def test_a_consumer_resumes_on_the_other_process_after_a_kill_nine(
    fresh_db_url: str, servers: Servers
) -> None:
    started = time.monotonic()
    stub = servers.mta_stub(*STUB_ARGS)
    first, second = (
        servers.delivery_service(fresh_db_url, stub.address, *SERVICE_ARGS) for _ in range(2)
    )
    consumer = await watched_delivery(fresh_db_url, first, stub)
    # Mid-delivery: the relay and the feedback are under way.
    await until(partial(consumer.has, KILL_EVERY), f"{KILL_EVERY} received")
    first.kill()
    assert consumer.running is not None
    with pytest.raises(grpc.aio.AioRpcError) as broken:
        async with asyncio.timeout(30):
            await consumer.running
    assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
    at_kill = len(consumer.received)
    consumer.resume(second.address)
    await finish(fresh_db_url, second, stub, consumer)
    print(
        f"\nfeed failover: {len(consumer.received)} events of {N} messages received once "
        f"each, {at_kill} from the process killed, {time.monotonic() - started:.1f} s"
    )
