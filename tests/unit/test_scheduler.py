"""The scheduler survives any failing round: logged, and the next round runs."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from delivery_service.scheduler import Scheduler


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
