"""Watchers of one delivery share its reads: one per interval, whatever their number."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from delivery_service.domain import lifecycle
from delivery_service.domain.feedback import FeedbackMode
from delivery_service.store.connection import NotFound
from delivery_service.store.records import DeliveryFigures
from delivery_service.usecases.watch import Watches

SENDING = DeliveryFigures(1, lifecycle.State.SENDING, FeedbackMode.EFS, 10, None, 0, 0,
                          0, 0, 0, 0, 0, 0, 0)  # fmt: skip


class Reads:
    def __init__(self, finish_after: int) -> None:
        self.count = 0
        self.finish_after = finish_after

    async def __call__(self, delivery_id: int) -> DeliveryFigures:
        if delivery_id != 1:
            raise NotFound(f"delivery {delivery_id} does not exist")
        self.count += 1
        state = lifecycle.State.SENDING
        if self.count >= self.finish_after:
            state = lifecycle.State.FINISHED
        return dataclasses.replace(SENDING, state=state, relayed=self.count)


async def collect(watches: Watches, delivery_id: int) -> list[int]:
    return [f.relayed async for f in watches.watch(delivery_id)]


def test_a_hundred_watchers_cost_one_read_per_interval() -> None:
    async def scenario() -> tuple[Reads, list[list[int]], int]:
        reads = Reads(finish_after=10)
        watches = Watches(reads, interval=0.01)
        seen = await asyncio.gather(*(collect(watches, 1) for _ in range(100)))
        return reads, seen, watches.polled

    reads, seen, polled = asyncio.run(scenario())
    assert reads.count == 10, "one read per interval, not one per watcher"
    assert all(s[-1] == 10 for s in seen), "every watcher sees the final figures"
    assert all(s == sorted(set(s)) for s in seen), "in order, none twice"
    assert polled == 0, "the reads stop with the last watcher"


def test_a_watcher_that_leaves_stops_the_reads_and_a_missing_delivery_is_not_found() -> None:
    async def scenario() -> tuple[int, int]:
        reads = Reads(finish_after=10**9)
        watches = Watches(reads, interval=0.01)
        async for _ in watches.watch(1):
            break
        await asyncio.sleep(0.05)
        with pytest.raises(NotFound):
            await collect(watches, 2)
        return reads.count, watches.polled

    count, polled = asyncio.run(scenario())
    assert (count, polled) == (1, 0)


def test_a_slow_watcher_gets_the_latest_reading_not_a_backlog() -> None:
    async def scenario() -> list[int]:
        reads = Reads(finish_after=30)
        watches = Watches(reads, interval=0.005)
        got = []
        async for figures in watches.watch(1):
            got.append(figures.relayed)
            await asyncio.sleep(0.05)  # ten readings go by meanwhile
        return got

    got = asyncio.run(scenario())
    assert got[-1] == 30 and len(got) < 15
