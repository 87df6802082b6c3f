"""A delivery's figures: its KPIs, the stats refresh, a recount, and the end of its
validity, when every message gets a final status and the figures become final."""

from __future__ import annotations

import datetime as dt
import logging
import time

from delivery_service import clock
from delivery_service.domain import feedback as fb
from delivery_service.domain import kpis, lifecycle
from delivery_service.store import counters, deliveries, expiry, logs
from delivery_service.store.connection import Database
from delivery_service.store.records import DeliveryFigures

log = logging.getLogger(__name__)

# Messages read at a time when a validity ends.
FINISH_BATCH = 10_000


def kpis_of(figures: DeliveryFigures) -> kpis.Kpis:
    return kpis.compute(
        figures.feedback_mode,
        figures.to_deliver,
        figures.counters,
        opened_at_stats=figures.opened_at_stats,
        clicked_at_stats=figures.clicked_at_stats,
        stats_time=figures.stats_time,
        final=figures.state is lifecycle.State.FINISHED,
        domains=figures.domains,
        failures=figures.failures,
        alerts=figures.raised_alerts,
    )


async def current(db: Database, delivery_id: int) -> DeliveryFigures:
    """The delivery's state and counters, in one statement: O(1) in its size."""
    return await counters.read_figures(db, delivery_id)


async def compute_stats(db: Database, delivery_id: int) -> tuple[kpis.Kpis, int]:
    """Recounts a delivery from its logs, repairs its counters and refreshes its stats.
    Returns the KPIs and how many counters had drifted. Once the retention pruned its
    sending logs, its figures are final: the KPIs as they are, none repaired."""
    async with db.transaction() as conn:
        await deliveries.get(conn, delivery_id)  # NOT_FOUND first
        await counters.lock_exclusive(conn, delivery_id)
        if await logs.pruned_time(conn, delivery_id) is None:
            repaired, _ = await counters.recount(conn, delivery_id)
        else:
            repaired = 0
        figures = await counters.figures(conn, delivery_id)
    if repaired:
        log.warning("delivery %d: %d counters had drifted, repaired", delivery_id, repaired)
    return kpis_of(figures), repaired


async def refresh_stats(db: Database, interval: dt.timedelta) -> int:
    """The scheduled refresh of Open % and Click %; returns how many deliveries it did."""
    async with db.transaction() as conn:
        return await counters.refresh_stats(conn, interval)


# How long a delivery whose validity is over waits for an unreachable MTA before it is
# finished anyway (its messages without a fate then expire).
MTA_WAIT_LIMIT = 600.0


class ValidityEnds:
    """Which deliveries to finish: those whose validity period is over by the service's
    clock, once the grace for late feedback has passed both since a round of this process
    first saw it over and since the link to the MTA was last (re)opened.

    The validity end is a date, read on the wall clock (`clock.now()`), which may step; the
    grace is a wait, measured on the monotonic clock, which does not. A forward step of the
    wall clock past the end therefore still leaves the MTA the whole grace to report what
    happened before the end (it fires its overdue steps at once); a backward step puts the
    end back in the future, and the wait starts again when it is over again. The MTA sends
    the feedback it holds when a stream opens: a process started after a validity ended,
    or whose link was down, waits the grace from the stream's opening (seen: an MTA back
    after a restart with 37,000 events unacknowledged, the delivery finished 0.6 s after
    the stream opened, its late opens and deliveries then not in the final figures). While
    the link is down nothing finishes, up to MTA_WAIT_LIMIT after the end.
    """

    def __init__(self, grace: dt.timedelta, mta_wait_limit: float = MTA_WAIT_LIMIT) -> None:
        self.grace = grace.total_seconds()
        self.mta_wait_limit = max(mta_wait_limit, self.grace)
        self._over_since: dict[int, float] = {}  # delivery -> monotonic time first seen over

    async def due(self, db: Database, link_opened: float | None) -> list[int]:
        """`link_opened`: the monotonic time the link's stream opened; None while down."""
        async with db.connection() as conn:
            over = await expiry.expiring_deliveries(conn)
        return self.decide(over, time.monotonic(), link_opened)

    def decide(self, over: list[int], now: float, link_opened: float | None) -> list[int]:
        """Of the deliveries over now, those to finish."""
        # Only those still over are kept: a delivery back in its validity starts afresh.
        self._over_since = since = {d: self._over_since.get(d, now) for d in over}
        return [
            d
            for d, first in since.items()
            if now - first >= self.mta_wait_limit
            or (
                now - first >= self.grace
                and link_opened is not None
                and now - link_opened >= self.grace
            )
        ]


async def finish(db: Database, delivery_id: int) -> bool:
    """Ends a delivery's validity: every message gets a final status, the figures are
    recounted and final. Returns whether this call finished it."""
    async with db.transaction() as conn:
        delivery = await deliveries.lock(conn, delivery_id)
        if delivery.state not in (lifecycle.State.SENDING, lifecycle.State.SENT):
            return False
        # Exclusive: no feedback batch changes the counters until the recount below.
        await counters.lock_exclusive(conn, delivery_id)
        after = 0
        while messages := await expiry.unsettled_messages(conn, delivery_id, after, FINISH_BATCH):
            after = messages[-1].message_id
            changed = []
            for message in messages:
                final = fb.expiry_outcome(message.mode, message.relayed, message.outcome)
                if final != message.outcome:
                    message.outcome = final
                    changed.append(message)
            # Moves the messages in the counters too, by domain and by failure.
            await expiry.write_messages(conn, delivery_id, changed, clock.now())
        # The final figures come from the logs themselves, in the same transaction:
        # nobody sees FINISHED with figures from before the recount.
        repaired, _ = await counters.recount(conn, delivery_id)
        if repaired:
            log.warning("delivery %d: %d counters had drifted, repaired", delivery_id, repaired)
        await expiry.set_finished(conn, delivery_id)
    return True
