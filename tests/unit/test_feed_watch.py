"""The event feed's watch hub (usecases.feed_watch) over a feed in memory: every
watcher gets every event once, in order, from where it starts; the end of the feed is
read once per interval whatever the number of watchers; a watcher that does not take
what it is handed is let go and catches up on its own, nothing buffered for it beyond a
few pages."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from delivery_service.domain import events as ev
from delivery_service.store.events import FeedEvent
from delivery_service.usecases import feed_watch
from delivery_service.usecases.feed_watch import FeedWatches

LIMIT = 10
INTERVAL = 0.01


def event(n: int) -> FeedEvent:
    return FeedEvent(n, 1, 1, f"e{n}", 1, n, "", "", ev.EventKind.OPENED,
                     0, 0, 0, 0, 0, 0, "", "")  # fmt: skip


@dataclass
class Feed:
    committed: list[FeedEvent] = field(default_factory=list)
    reads: list[ev.Position] = field(default_factory=list)
    read_made: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def read(
        self, delivery_id: int | None, after: ev.Position
    ) -> tuple[list[FeedEvent], ev.Position, bool]:
        self.reads.append(after)
        async with self.read_made:
            self.read_made.notify_all()
        found = [e for e in self.committed if e.position and e.position > after][:LIMIT]
        position = (found[-1].position if found else None) or after
        return found, position, len(found) < LIMIT

    async def read_count(self, n: int) -> None:
        """Returns once the feed has been read n times."""
        async with self.read_made:
            await self.read_made.wait_for(lambda: len(self.reads) >= n)

    def commit(self, n: int) -> None:
        start = len(self.committed) + 1
        self.committed += [event(i) for i in range(start, start + n)]


async def take(watches: FeedWatches, after: ev.Position, count: int) -> list[str]:
    got: list[str] = []
    async with asyncio.timeout(10):
        async for events, _ in watches.watch(None, after):
            got += [e.event_id for e in events]
            if len(got) >= count:
                return got
    raise AssertionError("the watch ended")


async def test_every_watcher_gets_every_event_once_in_order_from_its_start() -> None:
    feed = Feed()
    feed.commit(25)
    watches = FeedWatches(feed.read, INTERVAL)

    async def writer() -> None:
        for _ in range(20):
            feed.commit(7)
            await asyncio.sleep(INTERVAL / 2)

    starts = [ev.START, ev.Position(3, 1, 1), ev.Position(25, 1, 1)]
    results = await asyncio.gather(writer(), *(take(watches, s, 165 - s.xid) for s in starts))
    for start, got in zip(starts, results[1:], strict=True):
        assert got == [f"e{i}" for i in range(start.xid + 1, 166)]
    await asyncio.sleep(INTERVAL * 3)
    assert watches.tails == 0 and watches.watching == 0


async def test_the_end_of_the_feed_is_read_once_per_interval_for_all_watchers() -> None:
    feed = Feed()
    feed.commit(5)
    watches = FeedWatches(feed.read, INTERVAL)
    tasks = [asyncio.create_task(take(watches, ev.START, 10**9)) for _ in range(50)]
    # Each watcher's own first read, then the shared ones.
    await asyncio.wait_for(feed.read_count(60), 10)
    assert watches.tails == 1
    before = len(feed.reads)
    await asyncio.sleep(INTERVAL * 20)
    # 20 intervals: about 20 reads of the shared end, not 50 watchers' 1,000.
    assert len(feed.reads) - before <= 30
    assert watches.tails == 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_watcher_that_does_not_take_its_pages_is_let_go_and_catches_up() -> None:
    feed = Feed()
    watches = FeedWatches(feed.read, INTERVAL)
    stream = watches.watch(None, ev.START)
    got: list[str] = []
    feed.commit(1)
    got += [e.event_id for e in (await anext(stream))[0]]  # its own read
    # Caught up, it joins the tail and waits; the tail's first page wakes it.
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(INTERVAL * 3)
    feed.commit(1)
    got += [e.event_id for e in (await asyncio.wait_for(waiting, 10))[0]]
    (tail,) = watches._tails.values()
    (watcher,) = tail.watchers
    # In step, it takes nothing while far more is committed than it may have waiting.
    for _ in range(feed_watch.QUEUED_PAGES * 3):
        feed.commit(LIMIT)
        await asyncio.sleep(INTERVAL * 2)
        assert watcher.pages.qsize() <= feed_watch.QUEUED_PAGES
    assert watcher not in tail.watchers, "let go"
    total = len(feed.committed)
    async with asyncio.timeout(10):
        while len(got) < total:
            got += [e.event_id for e in (await anext(stream))[0]]
    assert got == [f"e{i}" for i in range(1, total + 1)]
    await stream.aclose()
