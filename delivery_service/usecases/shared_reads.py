"""Reads of one key shared by the callers that want it at the same time (GetKpis).

A caller never gets a reading older than its call: one that arrives while a read of its
key is in flight waits for the next read, which starts when that one is over and serves
every caller that arrived meanwhile. N callers polling one delivery then cost one read
at a time instead of N, and each still sees everything committed before it called.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SharedReads(Generic[K, V]):
    def __init__(self, read: Callable[[K], Awaitable[V]]) -> None:
        self._read = read
        # The read each key's waiting callers get: started when the key's read in
        # flight lands (or at once, when none is).
        self._next: dict[K, asyncio.Future[V]] = {}
        self._in_flight: set[K] = set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def get(self, key: K) -> V:
        reading = self._next.get(key)
        if reading is None:
            reading = self._next[key] = asyncio.get_running_loop().create_future()
            if key not in self._in_flight:
                self._start(key)
        # A caller that gives up (its deadline) leaves the read to the others.
        return await asyncio.shield(reading)

    def _start(self, key: K) -> None:
        reading = self._next.pop(key)
        self._in_flight.add(key)
        task = asyncio.ensure_future(self._read(key))
        task.add_done_callback(lambda done: self._landed(key, done, reading))

    def _landed(self, key: K, done: asyncio.Future[V], reading: asyncio.Future[V]) -> None:
        self._in_flight.discard(key)
        if done.cancelled():
            reading.cancel()
        elif (error := done.exception()) is not None:
            reading.set_exception(error)
            # Every caller may have given up: then nobody retrieves it, and that is fine.
            reading.add_done_callback(_retrieved)
        else:
            reading.set_result(done.result())
        if key in self._next:
            self._start(key)


def _retrieved(reading: asyncio.Future[V]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        reading.exception()
