"""Watching a delivery's figures: one read per delivery per interval, whatever the
number of watchers (each WatchDeployment stream used to read on its own)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from delivery_service.domain import lifecycle
from delivery_service.store.records import DeliveryFigures

# After these, a delivery's figures no longer change.
FINAL = frozenset({lifecycle.State.FINISHED, lifecycle.State.STOPPED})


class _Poll:
    """The reads of one delivery, shared by its watchers."""

    def __init__(self, read: Callable[[], Awaitable[DeliveryFigures]], interval: float) -> None:
        self.version = 0
        self.latest: DeliveryFigures | Exception | None = None
        self.changed = asyncio.Condition()
        self.watchers = 0
        self.task = asyncio.create_task(self._run(read, interval))

    async def _run(self, read: Callable[[], Awaitable[DeliveryFigures]], interval: float) -> None:
        while True:
            try:
                latest: DeliveryFigures | Exception = await read()
            except Exception as exc:  # NOT_FOUND, UNAVAILABLE: every watcher's answer
                latest = exc
            if latest != self.latest:  # an unchanged reading wakes no watcher
                async with self.changed:
                    self.latest = latest
                    self.version += 1
                    self.changed.notify_all()
            if isinstance(latest, Exception) or latest.state in FINAL:
                return
            await asyncio.sleep(interval)

    async def after(self, seen: int) -> tuple[int, DeliveryFigures]:
        """The first reading newer than version `seen` (the latest one, if several)."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.version > seen)
            latest = self.latest
        if isinstance(latest, Exception):
            raise latest
        assert latest is not None
        return self.version, latest


class Watches:
    def __init__(self, read: Callable[[int], Awaitable[DeliveryFigures]], interval: float) -> None:
        self.read = read
        self.interval = interval
        self._polls: dict[int, _Poll] = {}

    @property
    def polled(self) -> int:
        """How many deliveries are being read for their watchers."""
        return len(self._polls)

    async def watch(self, delivery_id: int) -> AsyncIterator[DeliveryFigures]:
        """The delivery's figures now, then each newer reading, until they are final. A
        slow watcher skips readings: it is never buffered for."""
        poll = self._polls.get(delivery_id)
        if poll is None:
            poll = self._polls[delivery_id] = _Poll(lambda: self.read(delivery_id), self.interval)
        poll.watchers += 1
        try:
            seen = 0
            while True:
                seen, figures = await poll.after(seen)
                yield figures
                if figures.state in FINAL:
                    return
        finally:
            poll.watchers -= 1
            if not poll.watchers:
                del self._polls[delivery_id]
                poll.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await poll.task
