"""The scheduler survives any failing round: logged, and the next round runs."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from delivery_service.scheduler import Scheduler
from delivery_service.usecases.figures import ValidityEnds


class FailingTwice(Scheduler):
    def __init__(self) -> None:
        super().__init__(
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            tick=0,
            stats_interval=dt.timedelta(hours=1),
            finalize_grace=dt.timedelta(seconds=1),
        )
        self.rounds = 0
        self.third = asyncio.Event()

    async def round(self) -> None:
        self.rounds += 1
        if self.rounds <= 2:
            raise KeyError("a bug in a round")
        self.third.set()


def test_an_unexpected_error_in_a_round_is_logged_and_the_rounds_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> int:
        scheduler = FailingTwice()
        task = asyncio.create_task(scheduler.run())
        try:
            await asyncio.wait_for(scheduler.third.wait(), 5)
        finally:
            task.cancel()
        return scheduler.rounds

    assert asyncio.run(scenario()) >= 3
    failures = [r for r in caplog.records if "scheduler round failed" in r.getMessage()]
    assert len(failures) == 2 and all("KeyError" in (r.exc_text or "") for r in failures)


def test_rounds_back_off_while_they_fail_and_keep_their_tick_otherwise() -> None:
    scheduler = FailingTwice()
    scheduler.tick = 0.25
    assert scheduler.pause() == 0.25
    scheduler.failures = 2
    assert scheduler.pause() == 1.0
    scheduler.failures = 10
    assert scheduler.pause() == 2.0
    scheduler.tick, scheduler.failures = 3600.0, 0
    assert scheduler.pause() == 3600.0
    scheduler.failures = 1
    assert scheduler.pause() == 3600.0


def test_a_delivery_finishes_a_grace_after_its_end_and_after_the_mta_link_opened() -> None:
    """The grace for late feedback runs from the later of: the round that first saw the
    validity over, and the opening of the link's stream (the MTA sends what it held when a
    stream opens). While the link is down nothing finishes, up to the wait limit."""
    ends = ValidityEnds(dt.timedelta(seconds=3), mta_wait_limit=60)
    # Link up since long before: 3 s after the end was first seen.
    assert ends.decide([1], 100.0, 0.0) == []
    assert ends.decide([1], 102.9, 0.0) == []
    assert ends.decide([1], 103.0, 0.0) == [1]
    # The link reopened at 102: 3 s after that, not before.
    ends = ValidityEnds(dt.timedelta(seconds=3), mta_wait_limit=60)
    assert ends.decide([2], 100.0, 102.0) == []
    assert ends.decide([2], 104.9, 102.0) == []
    assert ends.decide([2], 105.0, 102.0) == [2]
    # The link down: not until the wait limit after the end was first seen.
    ends = ValidityEnds(dt.timedelta(seconds=3), mta_wait_limit=60)
    assert ends.decide([3], 100.0, None) == []
    assert ends.decide([3], 159.9, None) == []
    assert ends.decide([3], 160.0, None) == [3]
    # A delivery back in its validity (the clock stepped back) starts afresh.
    ends = ValidityEnds(dt.timedelta(seconds=3), mta_wait_limit=60)
    assert ends.decide([4], 100.0, 0.0) == []
    assert ends.decide([], 101.0, 0.0) == []
    assert ends.decide([4], 102.0, 0.0) == []
    assert ends.decide([4], 105.0, 0.0) == [4]
