"""The running stub: takes relayed messages, fires scheduled steps, feeds streams.

asyncio, but no gRPC: the servicer maps protos to these calls and back.

Scenarios have scopes (scenarios.Scope): a message's fate and timeline follow its
delivery's scenario, else its client's, else the global one; a stream's faults and hold
follow its client's scenario, else the global one.

A client's feedback goes to its newest stream. A new stream takes over at once what the
one before it had sent unacknowledged (its client may have died silently, and gRPC can
take hours to notice); the older stream stays open on standby: it may still relay, and
it feeds again if the newer ones close. Several processes of one client (one delivery
service on one database) each keep a stream without taking turns to replace each other.

With a retention, the held ids of messages expired longer ago than it, whose timeline is
over, are forgotten (Spool.forget) by a task of their own, every minute (every retention,
if shorter), in short transactions between which relays go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from mta_stub import clock, scenarios
from mta_stub.outcomes import Outcomes
from mta_stub.scenarios import GLOBAL, Event, Fate, Faults, Mix, Scenario, Scope, Step, Timing
from mta_stub.spool import RUN_MAX, Scheduled, Spool, SpoolFull, Transition

log = logging.getLogger(__name__)

# Most events in one FeedbackBatch: an outbox row's worth, so that batches are whole rows.
BATCH_MAX = RUN_MAX
# Longest that waiting events linger for a fuller batch.
FLUSH_SECONDS = 0.02
# Steps fired in one go before the scheduler lets the streams run.
FIRE_LIMIT = 5000
# Batches a stream may have unacknowledged: feedback goes as fast as the client acks.
WINDOW_BATCHES = 64
# Most scoped scenarios held at once (each is a few hundred bytes, in memory and spool).
MAX_SCOPED_SCENARIOS = 10_000
# How long the scheduler waits before firing again when the spool was full.
FULL_RETRY_SECONDS = 0.5
# The longest the scheduler sleeps with steps scheduled, before it reads the clock again.
CLOCK_CHECK_SECONDS = 1.0
# How often expired messages are forgotten, at most (a shorter retention: every retention).
RETENTION_ROUND_SECONDS = 60.0
# The shortest time between two such rounds, whatever the retention.
RETENTION_ROUND_MIN_SECONDS = 1.0
# Most messages forgotten in one transaction: relays wait for it, so it stays short.
FORGET_LIMIT = 5000


class Relayed(NamedTuple):
    """What the stub keeps of a relayed message: no subject, body or links."""

    message_id: int
    delivery_id: int
    email: str
    expire_at: float


class Batch(NamedTuple):
    """A feedback batch for one stream, with the addresses its events' SMTP replies name
    (by message id; mta_stub.replies works the replies out)."""

    seq: int
    events: list[Event]
    addresses: dict[int, str]


class AckError(ValueError):
    """A FeedbackAck naming a batch never sent on its stream."""


class ScenarioLimitError(Exception):
    """A new scoped scenario beyond MAX_SCOPED_SCENARIOS; str() says what to do."""


class Engine:
    """The stub's behaviour over a Spool; start() before use, close() after.

    retention: seconds a held message is remembered after its expiry (once its timeline is
    over); None: for good.
    """

    def __init__(
        self, timing: Timing, spool: Spool | None = None, retention: float | None = None
    ) -> None:
        self._spool = spool if spool is not None else Spool()
        self._timing = timing
        self._retention = retention
        # Told how many messages each retention transaction forgot (the stub's metrics).
        self.on_forgotten: Callable[[int], None] | None = None
        # A spool that outlived a stub keeps its last SetScenarios; the flags apply otherwise.
        saved = self._spool.scenarios()
        global_ = saved.pop(GLOBAL, None)
        self._scenario = global_ if global_ is not None else Scenario(timing)
        if global_ is not None:
            log.info("scenario restored from the spool: %s", global_)
        self._scoped: dict[Scope, Scenario] = saved
        if saved:
            log.info("scoped scenarios restored from the spool: %d", len(saved))
        self._sessions: set[Session] = set()
        # Each client's open streams, oldest first: the last one is fed, the others wait.
        self._by_client: dict[str, list[Session]] = {}
        self._schedule_changed = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._retainer: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._ending = False

    @property
    def scenario(self) -> Scenario:
        """The global scenario."""
        return self._scenario

    def scenario_of(self, scope: Scope) -> Scenario | None:
        """A scope's own scenario (the global one for GLOBAL); None if it has none."""
        return self._scenario if scope == GLOBAL else self._scoped.get(scope)

    def fate_scenario(self, delivery_id: int, client: str) -> Scenario:
        """The scenario that decides a message's fate and timeline."""
        scoped = self._scoped
        if not scoped:
            return self._scenario
        return (
            scoped.get(Scope(delivery_id=delivery_id))
            or scoped.get(Scope(client_id=client))
            or self._scenario
        )

    def stream_scenario(self, client: str) -> Scenario:
        """The scenario whose faults and hold act on a client's stream."""
        if not self._scoped:
            return self._scenario
        return self._scoped.get(Scope(client_id=client)) or self._scenario

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
        scope: Scope = GLOBAL,
    ) -> None:
        """Replaces a scope's scenario: mix, faults and hold, and the intervals not 0.

        Raises scenarios.ScenarioError on a bad value, ScenarioLimitError when a new scope
        would make too many.
        """
        current = self.scenario_of(scope) or self._scenario
        scenario = scenarios.update_scenario(
            current, mix, faults, retry_interval_ms, engagement_delay_ms, hold_feedback, scope
        )
        new_scope = scope != GLOBAL and scope not in self._scoped
        if new_scope and len(self._scoped) >= MAX_SCOPED_SCENARIOS:
            raise ScenarioLimitError(
                f"the stub holds {MAX_SCOPED_SCENARIOS} scoped scenarios already:"
                " clear those no longer needed (ClearScenario)"
            )
        self._spool.save_scenario(scenario, scope)
        if scope == GLOBAL:
            self._scenario = scenario
        else:
            self._scoped[scope] = scenario
        log.info("scenario of %s set: %s", scope, scenario)
        # Held feedback may be released, faults changed.
        self._wake_sessions()

    def clear_scenario(self, scope: Scope) -> bool:
        """Removes a scope's scenario (the global one goes back to the start-up settings);
        returns whether the scope had one."""
        if scope == GLOBAL:
            self._scenario = Scenario(self._timing)
            self._spool.save_scenario(self._scenario)
            cleared = True
        else:
            cleared = self._scoped.pop(scope, None) is not None
            if cleared:
                self._spool.delete_scenario(scope)
        if cleared:
            log.info("scenario of %s cleared", scope)
            self._wake_sessions()
        return cleared

    def outcomes(self, delivery_id: int = 0, client: str | None = None) -> Outcomes:
        """The record of a delivery (0: all) as relayed by a client (None: all)."""
        return self._spool.outcomes(delivery_id, client)

    def relay(self, messages: Iterable[Relayed], client: str = "") -> tuple[int, int]:
        """Holds the new messages for client and makes their first attempt; returns
        (accepted, duplicates)."""
        now = clock.time()
        admissions = []
        # Batches are of one delivery: the scenario is looked up once per delivery.
        scenario_of: dict[int, Scenario] = {}
        for message_id, delivery_id, email, expire_at in messages:
            scenario = scenario_of.get(delivery_id)
            if scenario is None:
                scenario = scenario_of[delivery_id] = self.fate_scenario(delivery_id, client)
            fate = scenarios.decide_fate(email, message_id, scenario.mix)
            step = scenarios.first_step(fate, now, expire_at)
            # Kept only for the replies that name it.
            address = email if scenarios.has_replies(fate) else ""
            if step.due > now:
                # A delayed first step: nothing happens at acceptance.
                later = Scheduled(
                    step.due, message_id, delivery_id, expire_at, fate, step.kind, step.attempt
                )
                admissions.append(
                    Transition(message_id, delivery_id, None, later, address, expire_at=expire_at)
                )
                continue
            admissions.append(
                _transition(
                    message_id, delivery_id, expire_at, fate, step, scenario.timing, address
                )
            )
        accepted, duplicates = self._spool.accept(admissions, client)
        if accepted:
            self._schedule_changed.set()
            self._wake_sessions()
        return accepted, duplicates

    def open_session(self, client: str = "") -> Session:
        """A client's new feedback stream, which its feedback now goes to.

        The client's stream before it goes on standby, and its unacknowledged events are
        first in line for the new one, at once.
        """
        streams = self._by_client.setdefault(client, [])
        if streams:
            previous = streams[-1]
            previous.standby = True
            requeued = self._spool.requeue_stream(previous.stream)
            log.info(
                "stream %d of client %r on standby for a newer one, which takes over its %d"
                " unacknowledged events",
                previous.stream,
                client,
                requeued,
            )
        session = Session(self, self._spool, self._spool.open_stream(client), self._rng, client)
        self._sessions.add(session)
        streams.append(session)
        return session

    def close_session(self, session: Session) -> None:
        """Ends a stream: its unacknowledged events go back to the outbox for the next one.

        When it was its client's fed stream, the client's newest other stream is fed again.
        """
        self._sessions.discard(session)
        streams = self._by_client[session.client]
        streams.remove(session)
        if streams:
            streams[-1].standby = False
        else:
            del self._by_client[session.client]
        requeued = self._spool.close_stream(session.stream)
        if requeued:
            log.info("stream %d closed, %d events requeued", session.stream, requeued)
        self._wake_sessions()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._scheduler = loop.create_task(self._run_scheduler(), name="mta-scheduler")
        if self._retention is not None:
            self._retainer = loop.create_task(self._run_retention(), name="mta-retention")

    def end_streams(self) -> None:
        """Ends every feedback stream, which would otherwise outlive any shutdown grace."""
        self._ending = True
        self._wake_sessions()

    async def close(self) -> None:
        """Stops the scheduler and the retention, and closes the spool."""
        for task in (self._scheduler, self._retainer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._scheduler = self._retainer = None
        self._spool.close()

    async def forget_expired(self) -> int:
        """Forgets the held messages expired more than the retention ago whose timeline
        is over, in transactions of FORGET_LIMIT; returns how many. Raises SpoolFull (what
        was forgotten before stays forgotten)."""
        assert self._retention is not None
        cutoff = clock.time() - self._retention
        total = 0
        while True:
            forgotten = self._spool.forget(cutoff, FORGET_LIMIT)
            total += forgotten
            if forgotten and self.on_forgotten is not None:
                self.on_forgotten(forgotten)
            if forgotten < FORGET_LIMIT:
                break
            # Relays and acks go on between two transactions.
            await asyncio.sleep(0)
        if total:
            log.info(
                "forgot %d messages expired before %s (retention %g s): relayed again, they"
                " would be accepted as new",
                total,
                _utc(cutoff),
                self._retention,
            )
        return total

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
            self.fate_scenario(scheduled.delivery_id, scheduled.client).timing,
        )

    async def _run_retention(self) -> None:
        assert self._retention is not None
        interval = max(RETENTION_ROUND_MIN_SECONDS, min(RETENTION_ROUND_SECONDS, self._retention))
        full = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.forget_expired()
            except SpoolFull as exc:
                # Nothing of that transaction forgotten: the next round tries again.
                if not full:
                    log.error("%s; retrying every %g s", exc, interval)
                full = True
                continue
            except Exception:
                # Not worth the stub: said, and tried again next round.
                log.exception("retention round failed; retrying in %g s", interval)
                continue
            if full:
                log.warning("the spool takes writes again: retention goes on")
                full = False

    async def _run_scheduler(self) -> None:
        full_since: float | None = None
        while True:
            try:
                fired = self._spool.fire_due(clock.time(), FIRE_LIMIT, self._advance)
            except SpoolFull as exc:
                # Nothing fired, nothing lost: the steps stay due and fire late, once
                # there is room. Said once, not every retry.
                if full_since is None:
                    full_since = time.monotonic()
                    log.error("%s; retrying every %.1f s", exc, FULL_RETRY_SECONDS)
                await asyncio.sleep(FULL_RETRY_SECONDS)
                continue
            if full_since is not None:
                log.warning(
                    "the spool takes writes again: scheduled steps fire, %.1f s late at most",
                    time.monotonic() - full_since,
                )
                full_since = None
            if fired:
                self._wake_sessions()
            if fired == FIRE_LIMIT:
                await asyncio.sleep(0)
                continue
            self._schedule_changed.clear()
            due = self._spool.next_due()
            # Due by the wall clock, waited for on the monotonic one: woken at least every
            # CLOCK_CHECK_SECONDS, so that a step of the wall clock is seen (forwards: the
            # steps now due fire; backwards: they wait for the clock to reach them).
            delay = None if due is None else min(max(0.0, due - clock.time()), CLOCK_CHECK_SECONDS)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._schedule_changed.wait()


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def _transition(
    message_id: int,
    delivery_id: int,
    expire_at: float,
    fate: Fate,
    step: Step,
    timing: Timing,
    address: str = "",
) -> Transition:
    event = scenarios.make_event(message_id, delivery_id, fate, step)
    following = scenarios.next_step(fate, step, expire_at, timing)
    late_bounce = scenarios.awaits_late_bounce(fate)
    if following is None:
        return Transition(message_id, delivery_id, event, None, address, late_bounce, expire_at)
    follow_up = Scheduled(
        following.due,
        message_id,
        delivery_id,
        expire_at,
        fate,
        following.kind,
        following.attempt,
    )
    return Transition(message_id, delivery_id, event, follow_up, address, late_bounce, expire_at)


class Session:
    """One feedback stream: batches events, applies the scenario's faults, takes acks."""

    def __init__(
        self, engine: Engine, spool: Spool, stream: int, rng: random.Random, client: str = ""
    ) -> None:
        self._engine = engine
        self._spool = spool
        self._rng = rng
        self.stream = stream
        self.client = client
        # Set while a newer stream of the same client is fed instead of this one.
        self.standby = False
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
            # Another stream may have taken the events meanwhile, or this one be on standby.
            if self.standby:
                continue
            if self._spool.pending_count(self.client) or self._copies:
                return self._take(faults)

    async def _ready(self) -> Faults | None:
        """Waits until a batch is worth sending; returns the faults then in force."""
        loop = asyncio.get_running_loop()
        while True:
            if self._engine.ending:
                return None
            scenario = self._engine.stream_scenario(self.client)
            faults = scenario.faults
            if faults.drop_stream_every and self._batches >= faults.drop_stream_every:
                return None
            waiting = self._spool.pending_count(self.client) + len(self._copies)
            held = (
                self.standby
                or scenario.hold_feedback
                or self._spool.unacknowledged_batches(self.stream) >= WINDOW_BATCHES
            )
            if self.standby:
                # Copies of events now requeued for the newer stream, which sends them.
                self._copies = []
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
        events = copies + events
        named = {e.message_id for e in events if e.kind in scenarios.REPLY_KINDS}
        return Batch(seq, events, self._spool.addresses(named) if named else {})

    def ack(self, seq: int) -> None:
        """Forgets an acknowledged batch's events; acking twice is harmless, and so is acking
        a batch taken over by a newer stream (which sends its events again).
        """
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
