"""Feedback in: the batches the link receives, checked, applied, then acknowledged.

Batches that wait while others are applied are applied together, in one transaction:
under load the database gets few large batches rather than many small ones. A batch is
acknowledged on the stream that carried it only once committed. The database being
unavailable is worth waiting for, so that is retried, and so is a statement it cancelled
(a timeout: the events taken together are then applied in halves, by message) and a write
it had no room for (a full disk: said once in a while, not at each retry; health is
NOT_SERVING while a batch waits for room); anything else is surfaced (logged with its
traceback, counted) and the streams that carried the batches are broken, so that the MTA
sends them again after the reconnect: nothing is lost or acknowledged that was not
committed, and nothing loops silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from mta.v1 import mta_service_pb2 as mta

from delivery_service import observability
from delivery_service.domain import feedback as fb
from delivery_service.mta.link import ReceivedFeedback
from delivery_service.store.connection import Cancelled, DiskFull, Rejected, Unavailable
from delivery_service.store.ingest import EventBatch, IngestResult

log = logging.getLogger(__name__)


class ApplyBatch(Protocol):
    async def __call__(self, batch: EventBatch, *, final: bool = True) -> IngestResult: ...


_KINDS = {int(k) for k in fb.EventKind}
# What the database can hold, checked here so that one bad event from the MTA is
# dropped instead of failing its whole batch again and again: event ids short enough
# for the primary key's index and without NUL (text cannot hold it), times within
# google.protobuf.Timestamp's range (years 1 to 9999).
MAX_EVENT_ID_CHARS = 256
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
# An SMTP reply is kept as the MTA gave it, cut to these lengths, without NUL.
MAX_SMTP_CODE = 999
MAX_SMTP_STATUS_CHARS = 32
MAX_SMTP_TEXT_CHARS = 512
RETRY_MAX_DELAY = 2.0
# How often a batch whose events may fit the relay record soon (a relay acknowledged but
# not yet recorded, an open ahead of its delivery report) is tried again; how long they
# wait before they are refused is the ingest's `defer`.
DEFER_RETRY_SECONDS = 0.2
# The most events one batch may carry (the stub sends 500); the rest are refused.
MAX_BATCH_EVENTS = 10_000
REFUSED_LOG_SECONDS = 10.0
# While the database has no room, how often the ingest says so again.
DISK_FULL_LOG_SECONDS = 30.0


def _shown(text: str, limit: int) -> str:
    return text.replace("\x00", "")[:limit]


class _Tracked:
    """A received batch while its parts are applied: acknowledged once all are."""

    def __init__(self, received: ReceivedFeedback, parts: int) -> None:
        self.received = received
        self.remaining = parts


@dataclass
class _Part:
    """The events of a received batch that fall to one applier."""

    tracked: _Tracked
    events: list[mta.FeedbackEvent]

    @property
    def live(self) -> bool:
        return self.tracked.received.live


def _halves(parts: list[_Part]) -> tuple[list[_Part], list[_Part]] | None:
    """The parts' events split in two by message id, each message's events whole and in
    their order (an open may need its delivery report in the same statement); each batch
    is then acknowledged once both its halves are applied. None for a single message."""
    ids = sorted({e.message_id for p in parts for e in p.events})
    if len(ids) < 2:
        return None
    middle = ids[len(ids) // 2]
    low: list[_Part] = []
    high: list[_Part] = []
    for p in parts:
        below = [e for e in p.events if e.message_id < middle]
        above = [e for e in p.events if e.message_id >= middle]
        if below or not above:  # a batch without events is acknowledged with the first
            low.append(_Part(p.tracked, below))
        if above:
            high.append(_Part(p.tracked, above))
        if below and above:
            p.tracked.remaining += 1
    return low, high


class FeedbackIngest:
    """The appliers share the work by message: each takes the events of its own messages
    (message id modulo their number), in the order they arrived, so that one message's
    events are applied in order and an open never waits on a delivery report that
    another applier holds."""

    def __init__(
        self,
        apply: ApplyBatch,
        *,
        concurrency: int = 2,
        max_events: int = 10_000,
        defer: float = 30.0,
        on_health: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.apply = apply
        self.defer = defer
        self.concurrency = concurrency
        self.max_events = max_events
        # Bounded: when the database falls behind, receive() waits, and so does the link.
        # Each holds up to 40 parts (about 250 events each from the stub): enough that an
        # applier folds several thousand events into one statement under load.
        self._queues: list[asyncio.Queue[_Part]] = [asyncio.Queue(40) for _ in range(concurrency)]
        self._applying = 0
        self._idle = asyncio.Event()  # set while no feedback is being applied
        self._idle.set()
        self._refusals_said: dict[str, float] = {}  # reason -> when last logged
        # Told False when the database has no room for feedback, True once a write commits.
        self.on_health = on_health
        self._held = 0  # batches held for lack of room in the database
        self._full_since = 0.0  # since when one is
        self._full_refused = 0  # writes refused since
        self._full_said = -DISK_FULL_LOG_SECONDS  # when that was last logged

    async def receive(self, received: ReceivedFeedback) -> None:
        """Takes a batch from the link, split among the appliers; waits while they are full.
        Events beyond MAX_BATCH_EVENTS are refused."""
        events = received.batch.events
        if len(events) > MAX_BATCH_EVENTS:
            self._refused(Counter({fb.Refusal.EVENTS_PER_BATCH: len(events) - MAX_BATCH_EVENTS}))
        parts: list[list[mta.FeedbackEvent]] = [[] for _ in range(self.concurrency)]
        for e in events[:MAX_BATCH_EVENTS]:
            parts[e.message_id % self.concurrency].append(e)
        shares = [(i, part) for i, part in enumerate(parts) if part] or [(0, [])]
        tracked = _Tracked(received, len(shares))
        for i, part in shares:
            await self._queues[i].put(_Part(tracked, part))

    async def run(self) -> None:
        """The appliers, until cancelled."""
        await asyncio.gather(*(self._applier(queue) for queue in self._queues))

    async def drain(self, timeout: float) -> None:
        """Waits (up to `timeout`) for the batches being applied to be acknowledged. A
        batch cut short is not acknowledged: the MTA sends it again, nothing is lost."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def _applier(self, queue: asyncio.Queue[_Part]) -> None:
        """Applies the waiting parts, as many together as fit, then acknowledges each
        batch whose parts are all applied."""
        while True:
            taken = [await queue.get()]
            self._applying += 1
            self._idle.clear()
            try:
                size = len(taken[0].events)
                while not queue.empty() and size < self.max_events:
                    taken.append(queue.get_nowait())
                    size += len(taken[-1].events)
                await self._commit(taken)
            finally:
                self._applying -= 1
                if not self._applying:
                    self._idle.set()

    async def _commit(self, taken: list[_Part]) -> None:
        delay = 0.05
        held = False  # for lack of room in the database
        while True:
            # Batches whose stream broke are sent again on the next one: none need applying.
            live = [p for p in taken if p.live]
            if not live:
                break
            # Events that may fit the relay record soon wait, their batches unacknowledged,
            # up to `defer` seconds from the oldest batch's arrival; then they are refused.
            oldest = min(p.tracked.received.received_at for p in live)
            final = time.monotonic() - oldest >= self.defer
            try:
                result = await self.apply_events((e for p in live for e in p.events), final=final)
                if held:
                    held = False
                    await self._held_for_room(-1)
                if not result.deferred:
                    break
                await asyncio.sleep(DEFER_RETRY_SECONDS)
            except DiskFull as exc:
                if not held:
                    held = True
                    await self._held_for_room(+1)
                self._no_room(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
            except Unavailable as exc:
                # Too much for one statement within the database's timeouts, and likely
                # so again as it is: in halves.
                if isinstance(exc, Cancelled) and (halves := _halves(live)):
                    log.warning("%d feedback batches cancelled, applied in halves: %s",
                                len(live), exc)  # fmt: skip
                    for half in halves:
                        await self._commit(half)
                    live = []  # acknowledged by the halves
                    break
                log.warning("%d feedback batches not applied yet: %s", len(live), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
            except Exception:
                log.exception("%d feedback batches failed; the MTA will send them again", len(live))
                observability.FEEDBACK_FAILED_BATCHES.inc(len(live))
                for p in live:
                    p.tracked.received.abandon("feedback could not be applied")
                live = []
                break
        if held:  # given up: the MTA sends the batches again
            await self._held_for_room(-1)
        for p in live:
            p.tracked.remaining -= 1
            if not p.tracked.remaining:
                await p.tracked.received.acknowledge()

    async def _held_for_room(self, change: int) -> None:
        """Counts the batches held for lack of room in the database: from the first to the
        last of them, health is NOT_SERVING and delivery_db_disk_full 1. A write that still
        fits (in room a table has left) does not end it while another batch waits."""
        self._held += change
        if change > 0 and self._held == 1:
            self._full_since, self._full_refused = time.monotonic(), 0
            observability.DB_DISK_FULL.set(1)
            if self.on_health is not None:
                await self.on_health(False)
        elif change < 0 and not self._held:
            log.info("feedback written again after %.1f s without room in the database "
                     "(%d writes refused)", time.monotonic() - self._full_since,
                     self._full_refused)  # fmt: skip
            observability.DB_DISK_FULL.set(0)
            if self.on_health is not None:
                await self.on_health(True)

    def _no_room(self, exc: DiskFull) -> None:
        """A write of feedback refused for lack of space: counted, and said at most once
        every DISK_FULL_LOG_SECONDS, not at each retry."""
        observability.DB_DISK_FULL_ERRORS.labels("ingest").inc()
        self._full_refused += 1
        now = time.monotonic()
        if now - self._full_said >= DISK_FULL_LOG_SECONDS:
            self._full_said = now
            log.error("the database has no room for feedback (%d writes refused in %.0f s); "
                      "the batches are held unacknowledged until space is freed: %s",
                      self._full_refused, now - self._full_since, exc)  # fmt: skip

    async def apply_events(
        self, events: Iterable[mta.FeedbackEvent], *, final: bool = True
    ) -> IngestResult:
        """Checks and applies events: malformed ones and repeats within the batch are
        dropped (counted), the rest go to the database in one batch, which believes only
        what fits the relay record (see IngestResult)."""
        batch = EventBatch()
        seen: set[str] = set()
        malformed = repeated = 0
        for e in events:
            event_id = e.event_id
            t = e.event_time
            if (
                e.kind not in _KINDS
                or not 0 < len(event_id) <= MAX_EVENT_ID_CHARS
                or "\x00" in event_id
                or not _MIN_SECONDS <= t.seconds <= _MAX_SECONDS
            ):
                malformed += 1
                continue
            if event_id in seen:  # sent twice in one batch: applied once, counted a duplicate
                repeated += 1
                continue
            seen.add(event_id)
            batch.event_ids.append(event_id)
            batch.message_ids.append(e.message_id)
            batch.delivery_ids.append(e.delivery_id)
            batch.kinds.append(e.kind)
            # A reason this version does not know (a newer MTA's) is kept as unspecified.
            reason = e.reason
            batch.reasons.append(reason if reason in fb.MTA_BOUNCE_REASONS else 0)
            batch.attempts.append(e.attempt)
            batch.link_indexes.append(e.link_index)
            batch.event_micros.append(t.seconds * 1_000_000 + t.nanos // 1000)
            reply = e.smtp_reply
            batch.smtp_codes.append(reply.code if 0 <= reply.code <= MAX_SMTP_CODE else 0)
            batch.smtp_statuses.append(_shown(reply.enhanced_status, MAX_SMTP_STATUS_CHARS))
            batch.smtp_texts.append(_shown(reply.text, MAX_SMTP_TEXT_CHARS))
        if malformed:
            log.warning("ignored %d malformed feedback events", malformed)
            observability.FEEDBACK_REJECTED.inc(malformed)
        if not batch:
            return IngestResult()
        result = await self._apply_isolating(batch, final)
        observability.BATCH_SIZE.labels("feedback").observe(len(batch))
        observability.FEEDBACK_APPLIED.inc(result.applied)
        observability.FEEDBACK_DEDUPLICATED.inc(result.duplicates + repeated)
        observability.FEEDBACK_UNKNOWN.inc(result.unknown)
        self._refused(result.refused)
        return result

    def _refused(self, refused: Counter[str]) -> None:
        """Counted by reason; one log line per reason per REFUSED_LOG_SECONDS at most: a
        peer sending forgeries cannot flood the log."""
        now = time.monotonic()
        for reason, count in refused.items():
            observability.FEEDBACK_REFUSED.labels(reason).inc(count)
            if now - self._refusals_said.get(reason, -REFUSED_LOG_SECONDS) < REFUSED_LOG_SECONDS:
                continue
            self._refusals_said[reason] = now
            log.warning("refused %d feedback events that do not fit the relay record: %s",
                        count, reason)  # fmt: skip

    async def _apply_isolating(self, batch: EventBatch, final: bool) -> IngestResult:
        """Applies a batch; if the database refuses its data, applies each half on its
        own, down to the event it refuses, which is dropped. One bad event must not stop
        the stream: it would be sent again, and refused again, forever."""
        try:
            return await self.apply(batch, final=final)
        except Rejected as exc:
            if len(batch) == 1:
                log.error("feedback event %r refused, dropped: %s", batch.event_ids[0], exc)
                observability.FEEDBACK_REJECTED.inc()
                return IngestResult()
            half = len(batch) // 2
            return await self._apply_isolating(batch[:half], final) + await self._apply_isolating(
                batch[half:], final
            )
