"""The running stub: takes relayed messages, fires scheduled steps, feeds streams.

asyncio, but no gRPC: the servicer maps protos to these calls and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable
from typing import NamedTuple

from mta_stub import scenarios
from mta_stub.scenarios import Event, Fate, Faults, Mix, Scenario, Step, Timing
from mta_stub.spool import RUN_MAX, Outcomes, Scheduled, Spool, Transition

log = logging.getLogger(__name__)

# Most events in one FeedbackBatch: an outbox row's worth, so that batches are whole rows.
BATCH_MAX = RUN_MAX
# Longest that waiting events linger for a fuller batch.
FLUSH_SECONDS = 0.02
# Steps fired in one go before the scheduler lets the streams run.
FIRE_LIMIT = 5000
# Batches a stream may have unacknowledged: feedback goes as fast as the client acks.
WINDOW_BATCHES = 64


class Relayed(NamedTuple):
    """What the stub keeps of a relayed message: no subject, body or links."""

    message_id: int
    delivery_id: int
    email: str
    expire_at: float


class Batch(NamedTuple):
    """A feedback batch for one stream."""

    seq: int
    events: list[Event]


class AckError(ValueError):
    """A FeedbackAck naming a batch never sent on its stream."""


class Engine:
    """The stub's behaviour over a Spool; start() before use, close() after."""

    def __init__(self, timing: Timing, spool: Spool | None = None) -> None:
        self._spool = spool if spool is not None else Spool()
        # A spool that outlived a stub keeps its last SetScenario; the flags apply otherwise.
        saved = self._spool.scenario()
        self._scenario = saved if saved is not None else Scenario(timing)
        if saved is not None:
            log.info("scenario restored from the spool: %s", saved)
        self._sessions: set[Session] = set()
        self._schedule_changed = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._ending = False

    @property
    def scenario(self) -> Scenario:
        return self._scenario

    @property
    def ending(self) -> bool:
        """Whether end_streams() was called: every stream ends at its next batch."""
        return self._ending

    def set_scenario(
        self,
        mix: Mix | None,
        faults: Faults,
        retry_interval_ms: int,
        engagement_delay_ms: int,
        hold_feedback: bool = False,
    ) -> None:
        """Replaces mix, faults and hold; raises scenarios.ScenarioError on a bad value."""
        scenario = scenarios.update_scenario(
            self._scenario, mix, faults, retry_interval_ms, engagement_delay_ms, hold_feedback
        )
        self._spool.save_scenario(scenario)
        self._scenario = scenario
        log.info("scenario set: %s", scenario)
        # Held feedback may be released, faults changed.
        self._wake_sessions()

    def outcomes(self, delivery_id: int) -> Outcomes:
        return self._spool.outcomes(delivery_id)

    def relay(self, messages: Iterable[Relayed]) -> tuple[int, int]:
        """Holds the new messages and makes their first attempt; returns (accepted, duplicates)."""
        now = time.time()
        mix = self._scenario.mix
        timing = self._scenario.timing
        admissions = []
        for message_id, delivery_id, email, expire_at in messages:
            fate = scenarios.decide_fate(email, message_id, mix)
            step = scenarios.first_step(fate, now, expire_at)
            if step.due > now:
                # A delayed first step: nothing happens at acceptance.
                later = Scheduled(
                    step.due, message_id, delivery_id, expire_at, fate, step.kind, step.attempt
                )
                admissions.append(Transition(message_id, delivery_id, None, later))
                continue
            admissions.append(_transition(message_id, delivery_id, expire_at, fate, step, timing))
        accepted, duplicates = self._spool.accept(admissions)
        if accepted:
            self._schedule_changed.set()
            self._wake_sessions()
        return accepted, duplicates

    def open_session(self) -> Session:
        """A feedback stream's share of the outbox."""
        session = Session(self, self._spool, self._spool.open_stream(), self._rng)
        self._sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        """Ends a stream: its unacknowledged events go back to the outbox for the next one."""
        self._sessions.discard(session)
        requeued = self._spool.close_stream(session.stream)
        if requeued:
            log.info("stream %d closed, %d events requeued", session.stream, requeued)
            self._wake_sessions()

    def start(self) -> None:
        self._scheduler = asyncio.get_running_loop().create_task(
            self._run_scheduler(), name="mta-scheduler"
        )

    def end_streams(self) -> None:
        """Ends every feedback stream, which would otherwise outlive any shutdown grace."""
        self._ending = True
        self._wake_sessions()

    async def close(self) -> None:
        """Stops the scheduler and closes the spool."""
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
            self._scheduler = None
        self._spool.close()

    def _wake_sessions(self) -> None:
        for session in self._sessions:
            session.wake()

    def _advance(self, scheduled: Scheduled) -> Transition:
        step = Step(scheduled.kind, scheduled.attempt, scheduled.due)
        return _transition(
            scheduled.message_id,
            scheduled.delivery_id,
            scheduled.expire_at,
            scheduled.fate,
            step,
            self._scenario.timing,
        )

    async def _run_scheduler(self) -> None:
        while True:
            fired = self._spool.fire_due(time.time(), FIRE_LIMIT, self._advance)
            if fired:
                self._wake_sessions()
            if fired == FIRE_LIMIT:
                await asyncio.sleep(0)
                continue
            self._schedule_changed.clear()
            due = self._spool.next_due()
            delay = None if due is None else max(0.0, due - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._schedule_changed.wait()


def _transition(
    message_id: int, delivery_id: int, expire_at: float, fate: Fate, step: Step, timing: Timing
) -> Transition:
    event = scenarios.make_event(message_id, delivery_id, fate, step)
    following = scenarios.next_step(fate, step, expire_at, timing)
    if following is None:
        return Transition(message_id, delivery_id, event, None)
    follow_up = Scheduled(
        following.due,
        message_id,
        delivery_id,
        expire_at,
        fate,
        following.kind,
        following.attempt,
    )
    return Transition(message_id, delivery_id, event, follow_up)


class Session:
    """One feedback stream: batches events, applies the scenario's faults, takes acks."""

    def __init__(self, engine: Engine, spool: Spool, stream: int, rng: random.Random) -> None:
        self._engine = engine
        self._spool = spool
        self._rng = rng
        self.stream = stream
        # Set while there may be events to send; starts set for events left by earlier streams.
        self._wakeup = asyncio.Event()
        self._wakeup.set()
        self._copies: list[Event] = []
        self._last_seq = 0
        self._batches = 0
        self._since: float | None = None

    def wake(self) -> None:
        self._wakeup.set()

    async def next_batch(self) -> Batch | None:
        """The next batch to send, once ready; None when the stream must end (fault or shutdown)."""
        while True:
            faults = await self._ready()
            if faults is None:
                return None
            if faults.max_delay_ms:
                await asyncio.sleep(self._rng.uniform(0, faults.max_delay_ms) / 1000)
            # Another stream may have taken the events meanwhile.
            if self._spool.pending_count() or self._copies:
                return self._take(faults)

    async def _ready(self) -> Faults | None:
        """Waits until a batch is worth sending; returns the faults then in force."""
        loop = asyncio.get_running_loop()
        while True:
            if self._engine.ending:
                return None
            scenario = self._engine.scenario
            faults = scenario.faults
            if faults.drop_stream_every and self._batches >= faults.drop_stream_every:
                return None
            waiting = self._spool.pending_count() + len(self._copies)
            held = (
                scenario.hold_feedback
                or self._spool.unacknowledged_batches(self.stream) >= WINDOW_BATCHES
            )
            if waiting == 0 or held:
                self._since = None
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = loop.time()
            if self._since is None:
                self._since = now
            ready_at = self._since + FLUSH_SECONDS
            if faults.reorder_window > 1 and waiting < min(faults.reorder_window, BATCH_MAX):
                # Hold a part window long enough for a retry's outcome to overtake its bounce.
                ready_at = max(ready_at, self._since + 2 * scenario.timing.retry_interval)
            if waiting >= BATCH_MAX or now >= ready_at:
                return faults
            # Until then, or until something changes: more events, a new scenario (one
            # without the reorder fault sends the part window now), the end of the stream.
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ready_at - now):
                    await self._wakeup.wait()

    def _take(self, faults: Faults) -> Batch:
        copies = self._copies
        limit = BATCH_MAX - len(copies)
        window = faults.reorder_window
        if 1 < window <= limit:
            # Whole windows only, so that a window is never split between batches.
            limit -= limit % window
        seq, events = self._spool.take_feedback(self.stream, limit)
        self._last_seq = seq
        self._batches += 1
        self._since = asyncio.get_running_loop().time()
        self._copies = list(events) if faults.duplicate_events else []
        if window > 1:
            events = _shuffled_windows(events, window, self._rng)
        return Batch(seq, copies + events)

    def ack(self, seq: int) -> None:
        """Forgets an acknowledged batch's events; acking twice is harmless."""
        if not 1 <= seq <= self._last_seq:
            raise AckError(f"ack.seq: {seq} was never sent on this stream")
        if self._spool.ack(self.stream, seq):
            # The window may have room again.
            self.wake()


def _shuffled_windows(events: list[Event], window: int, rng: random.Random) -> list[Event]:
    shuffled: list[Event] = []
    for start in range(0, len(events), window):
        chunk = events[start : start + window]
        rng.shuffle(chunk)
        shuffled.extend(chunk)
    return shuffled
