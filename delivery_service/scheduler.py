"""The background rounds: start occurrences and relays, end validity periods, refresh stats."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from delivery_service.mta.relay import Relayer
from delivery_service.store.connection import Database, Unavailable
from delivery_service.usecases import figures, recurring

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        db: Database,
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
            except Unavailable as exc:
                log.warning("scheduler round skipped: %s", exc)
            except Exception:
                # A round must never end the scheduler: expiry and occurrences would stop.
                log.exception("scheduler round failed; the next one tries again")
            await asyncio.sleep(self.tick)

    async def round(self) -> None:
        await recurring.start_due_occurrences(self.db)
        await self.relayer.pick_up()
        for delivery_id in await figures.expiring(self.db, self.finalize_grace):
            if await figures.finish(self.db, delivery_id):
                log.info("delivery %d finished: validity period over", delivery_id)
        now = time.monotonic()
        # Checked often, done at most once a stats interval per delivery (the SQL says which).
        if now - self._last_stats >= min(self.stats_interval.total_seconds(), 60.0):
            self._last_stats = now
            await figures.refresh_stats(self.db, self.stats_interval)
