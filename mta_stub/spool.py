"""The stub's state: messages held, the retry schedule, the feedback outbox, the outcomes.

Every change of state goes through Spool, in SQLite: in a file with --spool, so that
what the stub acknowledged survives its own kill -9, else in memory (':memory:'), with
the same code. Each change is one transaction: a relay batch, a round of steps fired,
an acknowledgement. The outcome record changes in the transaction of what it counts,
so it stays exact across a crash.

Memory stays bounded: the held ids, the schedule and the outbox live in SQLite only.
Memory keeps the outcome record (a row per delivery, so that GetOutcomes runs no query)
and, per open stream, which outbox rows its unacknowledged batches were made of.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import sqlite3
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from grpc_common import named_queries
from mta_stub.scenarios import (
    BounceReason,
    Event,
    EventKind,
    Fate,
    Scenario,
    is_final,
    make_fate,
)

IN_MEMORY = ":memory:"
# The schema's version, in PRAGMA user_version: a spool made by another one is refused.
# 2: the outbox holds packed runs of events (1 held one row per event).
SCHEMA_VERSION = 2
# Enough page cache for the hot ends of the tables (the newest ids, the earliest steps).
_CACHE_KIB = 64 * 1024
# Most events in an outbox row: a full feedback batch (engine.BATCH_MAX) is one row, so
# that a batch is usually whole rows and its acknowledgement deletes them.
RUN_MAX = 500
# An event in an outbox row, little-endian: message_id, delivery_id, kind, attempt,
# reason, link_index, event_time; the fields of scenarios.Event, in its order.
_EVENT = struct.Struct("<qqBiBid")


_Q = named_queries.load("mta_stub", "spool.sql")


class SpoolError(Exception):
    """The spool file cannot be used; str() says why."""


class Scheduled(NamedTuple):
    """A message's next step. Ordered by due, then message_id (unique in the schedule)."""

    due: float
    message_id: int
    delivery_id: int
    expire_at: float
    fate: Fate
    kind: EventKind
    attempt: int


class Transition(NamedTuple):
    """What happens to a message now (its event, if any), and its next step (if any)."""

    message_id: int
    delivery_id: int
    event: Event | None
    follow_up: Scheduled | None


@dataclass(slots=True)
class Outcomes:
    """The stub's record of one delivery, or of all; each message counted once."""

    accepted: int = 0
    duplicates: int = 0
    delivered: int = 0
    hard_bounced: int = 0
    soft_bounced: int = 0
    expired: int = 0
    opened: int = 0
    clicked: int = 0
    in_flight: int = 0
    unacknowledged_events: int = 0

    def add(self, other: Outcomes) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(slots=True)
class _Batch:
    """A feedback batch sent on a stream and not acknowledged yet: whole outbox rows."""

    runs: list[int]
    size: int
    per_delivery: Counter[int]


@dataclass(slots=True)
class _Stream:
    last_seq: int = 0
    batches: dict[int, _Batch] = field(default_factory=dict)


_KIND = {kind.value: kind for kind in EventKind}
_REASON = {reason.value: reason for reason in BounceReason}
# Bound as plain ints: sqlite3's default path for an int subclass is much slower.
sqlite3.register_adapter(EventKind, int)
sqlite3.register_adapter(BounceReason, int)


class Spool:
    """The SQLite spool. Not thread-safe: used from one event loop."""

    def __init__(self, path: str = IN_MEMORY) -> None:
        """Opens the spool at path, creating it if need be; raises SpoolError if it cannot."""
        self.path = path
        try:
            # No busy timeout: a killed stub's lock is gone with it, a live one's stays.
            self._db = sqlite3.connect(path, timeout=0, isolation_level=None)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open the spool {path}: {exc}") from exc
        try:
            self._prepare()
            self._outcomes = {
                row[0]: Outcomes(*row[1:]) for row in self._db.execute(_Q["all_outcomes"])
            }
            stored, next_event = self._db.execute(_Q["outbox_size"]).fetchone()
        except (sqlite3.Error, SpoolError) as exc:
            self._db.close()
            if isinstance(exc, SpoolError):
                raise
            hint = " (another stub is using it)" if "locked" in str(exc) else ""
            raise SpoolError(f"cannot use the spool {path}: {exc}{hint}") from exc
        self._stored: int = stored
        self._next_event: int = next_event
        # Events handed to a stream since the spool opened: numbers up to this one. Streams
        # do not outlive the process, so after a restart every stored event is sent again.
        self._cursor = 0
        # Rows of closed streams' unacknowledged batches: first in line.
        self._requeued: deque[int] = deque()
        self._streams: dict[int, _Stream] = {}
        self._next_stream = 1
        self._in_streams = 0

    def _prepare(self) -> None:
        db = self._db
        # One stub per spool: the lock, taken by the first transaction, is held until
        # close, or death, when the OS drops it. Set before WAL: no shared-memory index.
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        # WAL with synchronous=NORMAL: a commit is a write() to the WAL, no fsync. That
        # survives a kill of the process (the OS holds the pages), the crash the stub must
        # survive; the last commits may be lost to a power cut, the spool stays consistent.
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        with self._transaction():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _Q["schema"].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise SpoolError(
                    f"the spool {self.path} has schema version {version}; "
                    f"this stub reads version {SCHEMA_VERSION}"
                )

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- the scenario ----------------------------------------------------------------------

    def scenario(self) -> Scenario | None:
        """The scenario saved last, or None if none was."""
        row = self._db.execute(_Q["load_scenario"]).fetchone()
        return None if row is None else Scenario.from_json(row[0])

    def save_scenario(self, scenario: Scenario) -> None:
        with self._transaction() as db:
            db.execute(_Q["save_scenario"], (scenario.to_json(),))

    # --- messages and the schedule ---------------------------------------------------------

    def accept(self, admissions: Iterable[Transition]) -> tuple[int, int]:
        """Holds each new message, records its first event, schedules its next step.

        One transaction, committed when this returns. A message already held (earlier,
        before a restart, or earlier in the same batch) is only counted. Returns
        (accepted, duplicates).
        """
        admissions = list(admissions)
        events: list[Event] = []
        steps: list[Scheduled] = []
        accepted_in = Counter[int]()
        duplicates_in = Counter[int]()
        with self._transaction() as db:
            ids = json.dumps([admission.message_id for admission in admissions])
            new = {row[0] for row in db.execute(_Q["hold_new"], (ids,))}
            accepted = len(new)
            for message_id, delivery_id, event, follow_up in admissions:
                if message_id not in new:
                    duplicates_in[delivery_id] += 1
                    continue
                # Taken: the same id later in this batch is a duplicate.
                new.discard(message_id)
                accepted_in[delivery_id] += 1
                if event is not None:
                    events.append(event)
                if follow_up is not None:
                    steps.append(follow_up)
            deltas: dict[int, Outcomes] = {}
            for delivery_id, n in accepted_in.items():
                counts = _delta(deltas, delivery_id)
                counts.accepted += n
                counts.in_flight += n
            for delivery_id, n in duplicates_in.items():
                _delta(deltas, delivery_id).duplicates += n
            _tally(deltas, events)
            db.executemany(_Q["insert_step"], map(_step_row, steps))
            self._insert_events(db, events)
            self._add_outcomes(db, deltas)
        self._committed(deltas, len(events))
        return accepted, len(admissions) - accepted

    def next_due(self) -> float | None:
        """When the earliest scheduled step is due, or None when nothing is scheduled."""
        due: float | None = self._db.execute(_Q["next_due"]).fetchone()[0]
        return due

    def fire_due(self, now: float, limit: int, advance: Callable[[Scheduled], Transition]) -> int:
        """Fires up to limit steps due by now, in one transaction; returns how many.

        advance turns each step into its event and the message's next step.
        """
        events: list[Event] = []
        follow_ups: list[Scheduled] = []
        with self._transaction() as db:
            rows = db.execute(_Q["due_steps"], (now, limit)).fetchall()
            if not rows:
                return 0
            for row in rows:
                _message_id, _delivery_id, event, follow_up = advance(_scheduled(row))
                if event is not None:
                    events.append(event)
                if follow_up is not None:
                    follow_ups.append(follow_up)
            deltas: dict[int, Outcomes] = {}
            _tally(deltas, events)
            # The rows read are a prefix of the key: delete them in one range.
            db.execute(_Q["delete_steps_through"], rows[-1][:2])
            db.executemany(_Q["insert_step"], map(_step_row, follow_ups))
            self._insert_events(db, events)
            self._add_outcomes(db, deltas)
        self._committed(deltas, len(events))
        return len(rows)

    # --- the outbox and its streams --------------------------------------------------------

    def pending_count(self) -> int:
        """Events waiting to be handed to a stream."""
        return self._stored - self._in_streams

    def open_stream(self) -> int:
        """Registers a feedback stream; returns its id."""
        stream = self._next_stream
        self._next_stream += 1
        self._streams[stream] = _Stream()
        return stream

    def unacknowledged_batches(self, stream: int) -> int:
        """Batches of events sent on a stream and not acknowledged yet."""
        return len(self._streams[stream].batches)

    def take_feedback(self, stream: int, limit: int) -> tuple[int, list[Event]]:
        """Hands up to limit waiting events to a stream as its next batch; returns (seq, events).

        Closed streams' events come first, then the oldest never handed out. The seq is
        allocated even when no event is left, for a batch of resent copies.
        """
        runs: list[int] = []
        events: list[Event] = []
        room = limit
        while room > 0:
            run = self._next_run()
            if run is None:
                break
            first, count, packed = run
            if count > room:
                if events:
                    break
                # Only faults make room for less than a row: cut it, so batches stay whole rows.
                count, packed = self._cut(first, count, packed, room)
            if self._requeued:
                self._requeued.popleft()
            else:
                # The last event taken: a requeued row cut later gets a number below it.
                self._cursor = first + count - 1
            runs.append(first)
            events += _unpack(packed)
            room -= count
        state = self._streams[stream]
        state.last_seq += 1
        if events:
            per_delivery = Counter(event.delivery_id for event in events)
            state.batches[state.last_seq] = _Batch(runs, len(events), per_delivery)
            self._in_streams += len(events)
        return state.last_seq, events

    def _next_run(self) -> tuple[int, int, bytes] | None:
        if self._requeued:
            row: tuple[int, int, bytes] = self._db.execute(
                _Q["run"], (self._requeued[0],)
            ).fetchone()
            return row
        found: tuple[int, int, bytes] | None = self._db.execute(
            _Q["runs_after"], (self._cursor,)
        ).fetchone()
        return found

    def _cut(self, first: int, count: int, packed: bytes, keep: int) -> tuple[int, bytes]:
        """Splits a row in two, the first keep events and the rest; returns the first part."""
        head, tail = packed[: keep * _EVENT.size], packed[keep * _EVENT.size :]
        with self._transaction() as db:
            db.execute(_Q["cut_run"], (keep, head, first))
            db.execute(_Q["insert_run"], (first + keep, count - keep, tail))
        if self._requeued:
            # The rest is still first in line, after the part taken now.
            self._requeued.insert(1, first + keep)
        return keep, head

    def ack(self, stream: int, seq: int) -> int:
        """Forgets a stream's batch for good; returns how many events (0 if acked before).

        One transaction: the events go with their count in the outcome record.
        """
        batch = self._streams[stream].batches.pop(seq, None)
        if batch is None:
            return 0
        deltas = {
            delivery_id: Outcomes(unacknowledged_events=-n)
            for delivery_id, n in batch.per_delivery.items()
        }
        with self._transaction() as db:
            db.executemany(_Q["delete_run"], [(first,) for first in batch.runs])
            self._add_outcomes(db, deltas)
        self._committed(deltas, -batch.size)
        self._in_streams -= batch.size
        return batch.size

    def close_stream(self, stream: int) -> int:
        """Puts a closed stream's unacknowledged events back first in line; returns how many."""
        batches = self._streams.pop(stream).batches
        runs = [first for seq in sorted(batches) for first in batches[seq].runs]
        # Reversed, so that they keep their order at the front of the line.
        self._requeued.extendleft(reversed(runs))
        requeued = sum(batch.size for batch in batches.values())
        self._in_streams -= requeued
        return requeued

    # --- outcomes --------------------------------------------------------------------------

    def outcomes(self, delivery_id: int) -> Outcomes:
        """A copy of one delivery's record, or of all deliveries' when delivery_id is 0."""
        total = Outcomes()
        if delivery_id:
            found = self._outcomes.get(delivery_id)
            if found is not None:
                total.add(found)
        else:
            for counts in self._outcomes.values():
                total.add(counts)
        return total

    def _insert_events(self, db: sqlite3.Connection, events: list[Event]) -> None:
        rows = []
        first = self._next_event
        for start in range(0, len(events), RUN_MAX):
            run = events[start : start + RUN_MAX]
            packed = _packer(len(run)).pack(*itertools.chain.from_iterable(run))
            rows.append((first + start, len(run), packed))
        db.executemany(_Q["insert_run"], rows)

    def _add_outcomes(self, db: sqlite3.Connection, deltas: dict[int, Outcomes]) -> None:
        db.executemany(
            _Q["add_outcomes"],
            [(delivery_id, *dataclasses.astuple(d)) for delivery_id, d in deltas.items()],
        )

    def _committed(self, deltas: dict[int, Outcomes], events_added: int) -> None:
        """Mirrors a committed transaction in memory."""
        for delivery_id, delta in deltas.items():
            _delta(self._outcomes, delivery_id).add(delta)
        if events_added > 0:
            self._next_event += events_added
        self._stored += events_added


@functools.lru_cache(maxsize=RUN_MAX)
def _packer(count: int) -> struct.Struct:
    """Packs count events at once: one call, not one per event."""
    return struct.Struct("<" + _EVENT.format.lstrip("<") * count)


def _unpack(packed: bytes) -> list[Event]:
    return [
        Event(message_id, delivery_id, _KIND[kind], attempt, _REASON[reason], link, when)
        for message_id, delivery_id, kind, attempt, reason, link, when in _EVENT.iter_unpack(packed)
    ]


def _delta(deltas: dict[int, Outcomes], delivery_id: int) -> Outcomes:
    counts = deltas.get(delivery_id)
    if counts is None:
        counts = deltas[delivery_id] = Outcomes()
    return counts


def _tally(deltas: dict[int, Outcomes], events: list[Event]) -> None:
    """Counts new events in the record: each message once, whatever its events."""
    # Grouped first: a batch has thousands of events but few deliveries and kinds.
    groups = Counter((event.delivery_id, event.kind, event.attempt == 1) for event in events)
    for (delivery_id, kind, first_attempt), n in groups.items():
        counts = _delta(deltas, delivery_id)
        counts.unacknowledged_events += n
        if is_final(kind):
            counts.in_flight -= n
            if kind is EventKind.DELIVERED:
                counts.delivered += n
            elif kind is EventKind.HARD_BOUNCE:
                counts.hard_bounced += n
            else:
                counts.expired += n
        elif kind is EventKind.SOFT_BOUNCE:
            # Counts messages, not bounces: every soft-bouncing message has an attempt 1.
            if first_attempt:
                counts.soft_bounced += n
        elif kind is EventKind.OPENED:
            counts.opened += n
        elif kind is EventKind.CLICKED:
            counts.clicked += n


def _step_row(step: Scheduled) -> tuple[float | int, ...]:
    due, message_id, delivery_id, expire_at, fate, kind, attempt = step
    return (
        due,
        message_id,
        delivery_id,
        expire_at,
        fate.hard_reason,
        fate.soft_bounces,
        fate.opened,
        fate.click_link,
        fate.delay_ms,
        kind,
        attempt,
    )


def _scheduled(row: Any) -> Scheduled:
    due, message_id, delivery_id, expire_at, reason, soft, opened, click, delay, kind, attempt = row
    fate = make_fate(_REASON[reason], soft, bool(opened), click, delay)
    return Scheduled(due, message_id, delivery_id, expire_at, fate, _KIND[kind], attempt)
