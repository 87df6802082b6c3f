"""The background rounds: start relays, end validity periods, refresh stats, start occurrences."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from delivery_service import store
from delivery_service.relay import Relayer

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        db: store.Store,
        relayer: Relayer,
        *,
        tick: float,
        stats_interval: dt.timedelta,
        finalize_grace: dt.timedelta,
    ) -> None:
        self.db = db
        self.relayer = relayer
        self.tick = tick
        self.stats_interval = stats_interval
        self.finalize_grace = finalize_grace
        self._last_stats = 0.0

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except store.Unavailable as exc:
                log.warning("scheduler round skipped: %s", exc)
            await asyncio.sleep(self.tick)

    async def round(self) -> None:
        for delivery_id, started in await self.db.start_due_occurrences():
            log.info(
                "occurrence %d created (%s)",
                delivery_id,
                "sending" if started else "waiting for confirmation",
            )
        await self.relayer.pick_up()
        for delivery_id in await self.db.expiring_deliveries(self.finalize_grace):
            if await self.db.finish(delivery_id):
                log.info("delivery %d finished: validity period over", delivery_id)
        now = time.monotonic()
        # Checked often, done at most once a stats interval per delivery (the SQL says which).
        if now - self._last_stats >= min(self.stats_interval.total_seconds(), 60.0):
            self._last_stats = now
            await self.db.refresh_stats(self.stats_interval)
