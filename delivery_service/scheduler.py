"""The background rounds: start occurrences and relays, end validity periods, refresh stats."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

from delivery_service import observability
from delivery_service.domain import quarantine
from delivery_service.domain.alerts import AlertRules
from delivery_service.mta.relay import Relayer
from delivery_service.store.connection import Database, DiskFull, Unavailable
from delivery_service.usecases import addresses, alerts, deliveries, events, figures, recurring

log = logging.getLogger(__name__)

# Rounds failed in a row before the service reports itself unhealthy.
FAILING_ROUNDS = 5
# The longest wait between two failed rounds: relays and expiry must not lag behind a
# database that came back by more than this.
MAX_BACKOFF = 2.0


class Scheduler:
    def __init__(
        self,
        db: Database,
        relayer: Relayer,
        *,
        tick: float,
        stats_interval: dt.timedelta,
        finalize_grace: dt.timedelta,
        address_rules: quarantine.Rules = quarantine.DEFAULT_RULES,
        address_cleanup_interval: dt.timedelta = dt.timedelta(days=1),
        alert_rules: AlertRules | None = None,
        alert_interval: dt.timedelta = dt.timedelta(minutes=10),
        feed_retention_beyond_validity: dt.timedelta = dt.timedelta(days=7),
        sending_log_retention_beyond_validity: dt.timedelta = dt.timedelta(days=180),
        feed_cleanup_interval: dt.timedelta = dt.timedelta(hours=1),
        on_health: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.relayer = relayer
        self.tick = tick
        self.stats_interval = stats_interval
        self.finalize_grace = finalize_grace
        self.validity_ends = figures.ValidityEnds(finalize_grace)
        self.address_rules = address_rules
        self.address_cleanup_interval = address_cleanup_interval
        self._last_cleanup = 0.0
        self.alert_rules = alert_rules or AlertRules()
        self.alert_interval = alert_interval
        self._last_alerts = 0.0
        self.feed_retention_beyond_validity = feed_retention_beyond_validity
        self.sending_log_retention_beyond_validity = sending_log_retention_beyond_validity
        self.feed_cleanup_interval = feed_cleanup_interval
        self._last_feed_cleanup = 0.0
        # Where the address histories' retention goes on, in address order.
        self._history_after = ""
        # Told False when rounds keep failing, True when one succeeds again.
        self.on_health = on_health
        self._last_stats = 0.0
        self.failures = 0  # rounds failed in a row

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except Unavailable as exc:
                if isinstance(exc, DiskFull):
                    observability.DB_DISK_FULL_ERRORS.labels("scheduler").inc()
                await self._failed()
                log.warning("scheduler round skipped: %s", exc)
            except Exception:
                # A round must never end the scheduler: expiry and occurrences would stop.
                await self._failed()
                log.exception("scheduler round failed (%d in a row); retrying", self.failures)
            else:
                if self.failures >= FAILING_ROUNDS and self.on_health is not None:
                    await self.on_health(True)
                self.failures = 0
            # Backs off while rounds fail, up to MAX_BACKOFF.
            await asyncio.sleep(self.pause())

    def pause(self) -> float:
        """The tick, doubled for each round failed in a row, up to MAX_BACKOFF (or the
        tick, if that is longer)."""
        if not self.failures:
            return self.tick
        backoff: float = self.tick * 2 ** min(self.failures, 16)
        return min(backoff, max(MAX_BACKOFF, self.tick))

    async def _failed(self) -> None:
        self.failures += 1
        if self.failures == FAILING_ROUNDS and self.on_health is not None:
            log.error("%d scheduler rounds failed in a row: reporting NOT_SERVING", self.failures)
            await self.on_health(False)

    async def round(self) -> None:
        await recurring.start_due_occurrences(self.db)
        await self.relayer.pick_up()
        for delivery_id in await self.validity_ends.due(self.db, self.relayer.link.opened_at):
            if await figures.finish(self.db, delivery_id):
                log.info("delivery %d finished: validity period over", delivery_id)
        now = time.monotonic()
        # Checked often, done at most once a stats interval per delivery (the SQL says which).
        if now - self._last_stats >= min(self.stats_interval.total_seconds(), 60.0):
            self._last_stats = now
            await figures.refresh_stats(self.db, self.stats_interval)
        if now - self._last_cleanup >= self.address_cleanup_interval.total_seconds():
            released = await addresses.release_due(self.db, self.address_rules)
            # Until the due releases are done: a round takes a bounded batch.
            if released < addresses.RELEASES_PER_ROUND:
                self._last_cleanup = now
            if released:
                log.info("address cleanup: %d erroneous addresses valid again", released)
        if now - self._last_alerts >= self.alert_interval.total_seconds():
            self._last_alerts = now
            await alerts.check(self.db, self.alert_rules)
        if now - self._last_feed_cleanup >= self.feed_cleanup_interval.total_seconds():
            pruned = await events.prune(self.db, self.feed_retention_beyond_validity)
            # The feedback events of a delivery go once its rows of the feed are gone,
            # and the address histories' events once no feedback can come before them.
            logged = await events.prune_event_log(self.db, self.feed_retention_beyond_validity)
            sending_logs = await deliveries.prune_sending_logs(
                self.db, self.sending_log_retention_beyond_validity
            )
            history = await addresses.prune_history(self.db, self._history_after)
            self._history_after = history.after or ""
            # Until all are within their retention: a round takes a bounded batch.
            if (
                pruned < events.PRUNED_PER_ROUND
                and logged < events.PRUNED_PER_ROUND
                and sending_logs < deliveries.LOGS_PRUNED_PER_ROUND
                and history.after is None
            ):
                self._last_feed_cleanup = now
            if pruned:
                log.info("event feed retention: %d rows pruned", pruned)
            if logged:
                log.info("feedback event log retention: %d events pruned", logged)
            if sending_logs:
                log.info("sending log retention: %d rows pruned", sending_logs)
            if history.events or history.entries:
                log.info(
                    "address history retention: %d events and %d entries the same as none pruned",
                    history.events,
                    history.entries,
                )
