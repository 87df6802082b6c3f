"""Watching the event feed (WatchDeliveryEvents): one read per poll interval per filter
(a delivery, or all), whatever the number of watchers, handed to each watcher in step
with it; a watcher behind reads on its own, a page after another, at the database's
speed, then joins; a watcher too slow to take what it is handed is let go (it then
reads on its own again), so nothing is buffered for it beyond a few pages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from delivery_service.domain import events as ev
from delivery_service.store.events import FeedEvent

# A read of the feed: (delivery or None, after) -> (events, position after them, whether
# that is the end of what is committed).
Read = Callable[[int | None, ev.Position], Awaitable[tuple[list[FeedEvent], ev.Position, bool]]]
Page = tuple[list[FeedEvent], ev.Position]

# Pages a watcher may have waiting before it is let go.
QUEUED_PAGES = 8


class _Watcher:
    def __init__(self) -> None:
        # Pages in step with the tail; None: let go, read on your own.
        self.pages: asyncio.Queue[Page | None] = asyncio.Queue(QUEUED_PAGES)
        self.gone = False

    def hand(self, page: Page) -> bool:
        """Hands a page over; False if the watcher is too far behind to take it."""
        try:
            self.pages.put_nowait(page)
        except asyncio.QueueFull:
            return False
        return True

    def let_go(self) -> None:
        self.gone = True
        with contextlib.suppress(asyncio.QueueFull):  # full: `gone` tells it, once drained
            self.pages.put_nowait(None)

    async def next_page(self) -> Page | None:
        """The next page handed over; None once let go and drained."""
        if self.gone and self.pages.empty():
            return None
        return await self.pages.get()


class _Tail:
    """The end of one filter's feed, read once per interval for its watchers."""

    def __init__(self, read: Read, delivery_id: int | None, head: ev.Position, interval: float):
        self.head = head
        self.watchers: set[_Watcher] = set()
        self.task = asyncio.create_task(self._run(read, delivery_id, interval))

    async def _run(self, read: Read, delivery_id: int | None, interval: float) -> None:
        while True:
            try:
                events, position, caught_up = await read(delivery_id, self.head)
            except Exception:  # each watcher, reading on its own, meets the error itself
                self._let_all_go()
                await asyncio.sleep(interval)
                continue
            if position != self.head:
                for watcher in list(self.watchers):
                    if not watcher.hand((events, position)):
                        self.watchers.discard(watcher)
                        watcher.let_go()
                self.head = position
            if caught_up:
                await asyncio.sleep(interval)

    def _let_all_go(self) -> None:
        for watcher in self.watchers:
            watcher.let_go()
        self.watchers.clear()


class FeedWatches:
    def __init__(self, read: Read, interval: float) -> None:
        self.read = read
        self.interval = interval
        self._tails: dict[int | None, _Tail] = {}
        self.watching = 0

    @property
    def tails(self) -> int:
        """How many filters are being read for their watchers."""
        return len(self._tails)

    async def watch(
        self, delivery_id: int | None, after: ev.Position
    ) -> AsyncGenerator[Page, None]:
        """Pages of the feed after `after`, in order and without gaps, each with the
        position after it, as they are committed; never ends by itself."""
        position = after
        self.watching += 1
        try:
            while True:
                # On its own until it has read all that is committed.
                events, reached, caught_up = await self.read(delivery_id, position)
                if reached != position:
                    yield events, reached
                    position = reached
                if not caught_up:
                    continue
                tail = self._tails.get(delivery_id)
                if tail is None:
                    tail = self._tails[delivery_id] = _Tail(
                        self.read, delivery_id, position, self.interval
                    )
                if tail.head > position:
                    continue  # committed since its read: read on its own again
                async for page in self._in_step(delivery_id, tail, position):
                    yield page
                    position = page[1]
        finally:
            self.watching -= 1

    async def _in_step(
        self, delivery_id: int | None, tail: _Tail, position: ev.Position
    ) -> AsyncIterator[Page]:
        """What the tail hands over, from `position` (at or past its head: the tail's
        pages follow on from its head, so nothing is skipped), until it lets go."""
        watcher = _Watcher()
        tail.watchers.add(watcher)
        try:
            while (page := await watcher.next_page()) is not None:
                events, reached = page
                if reached > position:
                    yield _after(events, position), reached
                    position = reached
        finally:
            tail.watchers.discard(watcher)
            if not tail.watchers and self._tails.get(delivery_id) is tail:
                del self._tails[delivery_id]
                tail.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await tail.task


def _after(events: list[FeedEvent], position: ev.Position) -> list[FeedEvent]:
    """The events past `position`: all of them but where the page began before it (the
    events are in feed order)."""
    if not events or events[0][:3] > position:
        return events
    return [e for e in events if e.xid and e[:3] > position]
