"""SharedReads: callers of one key at once share reads, and none gets a reading that
started before its call."""

from __future__ import annotations

import asyncio

import pytest

from delivery_service.usecases.shared_reads import SharedReads


class Source:
    """A read that takes until released, and returns how many reads had started."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()
        self.error: Exception | None = None

    async def read(self, key: str) -> tuple[str, int]:
        self.started += 1
        number = self.started
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return key, number


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_callers_during_a_read_share_the_next_one_started_after_them() -> None:
    source = Source()
    reads = SharedReads(source.read)
    first = asyncio.create_task(reads.get("a"))
    await settle()
    assert source.started == 1
    # Arrived while read 1 is in flight: not read 1 (it may predate them), but read 2,
    # started when read 1 lands, one for all of them.
    later = [asyncio.create_task(reads.get("a")) for _ in range(5)]
    other = asyncio.create_task(reads.get("b"))  # another key reads at once
    await settle()
    assert source.started == 2
    source.release.set()
    assert await first == ("a", 1)
    assert await other == ("b", 2)
    assert await asyncio.gather(*later) == [("a", 3)] * 5
    assert source.started == 3
    assert reads.in_flight == 0
    # Nothing in flight: a caller reads at once.
    assert await reads.get("a") == ("a", 4)


async def test_a_failed_read_fails_its_callers_and_the_next_reads_again() -> None:
    source = Source()
    reads = SharedReads(source.read)
    source.error = LookupError("no such delivery")
    # The first starts read 1, the others wait for read 2: both fail.
    failing = [asyncio.create_task(reads.get("a")) for _ in range(3)]
    await settle()
    source.release.set()
    for task in failing:
        with pytest.raises(LookupError, match="no such delivery"):
            await task
    assert source.started == 2
    source.error = None
    assert await reads.get("a") == ("a", 3)


async def test_a_caller_that_gives_up_leaves_the_read_to_the_others() -> None:
    source = Source()
    reads = SharedReads(source.read)
    first = asyncio.create_task(reads.get("a"))
    await settle()
    impatient = asyncio.create_task(reads.get("a"))
    patient = asyncio.create_task(reads.get("a"))
    await settle()
    impatient.cancel()
    await settle()
    source.release.set()
    assert await first == ("a", 1)
    assert await patient == ("a", 2)
    assert impatient.cancelled()
    # Nobody waits for a failed read: its error is dropped without a warning.
    source.release.clear()
    source.error = LookupError("gone")
    alone = asyncio.create_task(reads.get("a"))
    await settle()
    alone.cancel()
    source.release.set()
    await settle()
    assert reads.in_flight == 0
