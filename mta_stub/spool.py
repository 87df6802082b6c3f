"""The stub's state: messages held, the retry schedule, the feedback outbox, the outcomes.

Every change of state goes through Spool, in SQLite: in a file with --spool, so that
what the stub acknowledged survives its own kill -9, else in memory (':memory:'), with
the same code. Each change is one transaction: a relay batch, a round of steps fired,
an acknowledgement. The outcome record changes in the transaction of what it counts,
so it stays exact across a crash.

The feedback about a message is for the client that relayed it (its owner, by the
Hello's client_id): each outbox row holds one owner's events, and a stream takes only
its own client's. Several clients can share the stub without seeing each other's
feedback; message ids are the stub's alone, shared by all clients.

Memory stays bounded: the held ids, the schedule, the outbox and the addresses that SMTP
replies name live in SQLite only. Memory keeps the outcome record (a row per delivery and
client, so that GetOutcomes runs no query; mta_stub.outcomes says what counts for what),
the clients' numbers and, per open stream, which outbox rows its unacknowledged batches
were made of.

So does the disk, once retention applies: the schedule empties as timelines end and the
outbox as feedback is acknowledged, and forget() removes the held ids (and their addresses)
of messages whose timeline is over and whose expiry, as relayed, is older than a cutoff;
the engine runs it with the cutoff its retention gives (--retention-seconds). A forgotten
id relayed again is accepted as new. What stays for good is a row per delivery and client
(the outcome record), and the ids held before schema version 5 whose expiry was not kept.
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
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from grpc_common import named_queries
from mta_stub.outcomes import Key, Outcomes, delta, tally
from mta_stub.scenarios import (
    GLOBAL,
    BounceReason,
    Event,
    EventKind,
    Fate,
    Scenario,
    Scope,
    make_fate,
)

IN_MEMORY = ":memory:"
# The schema's version, in PRAGMA user_version: a spool made by another one is refused.
# 2: the outbox holds packed runs of events (1 held one row per event).
# 3: events, steps and outcomes have an owner (a client); scenarios have a scope.
# 4: steps have a soft reason and an event after the delivery; the addresses replies name;
#    outcomes count complaints, late bounces and ignored replies. A spool of 3 is migrated.
# 5: held messages keep their expiry, for retention (forget). A spool of 3 or 4 is migrated.
SCHEMA_VERSION = 5
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


class SpoolFull(SpoolError):
    """A write the spool could not make for lack of space (SQLITE_FULL: the disk is full,
    or the database at its max_page_count). Nothing of it was kept: the transaction was
    rolled back, memory untouched. str() names the spool; operation says what the write was.
    """

    def __init__(self, path: str, operation: str, cause: sqlite3.Error) -> None:
        super().__init__(f"the MTA stub's spool {path} is full: {operation} not written ({cause})")
        self.operation = operation


class Scheduled(NamedTuple):
    """A message's next step. Ordered by due, then message_id (unique in the schedule).

    client is the message's owner, as fire_due reports it; the spool keeps a step's
    owner itself, so a step handed to the spool needs none.
    """

    due: float
    message_id: int
    delivery_id: int
    expire_at: float
    fate: Fate
    kind: EventKind
    attempt: int
    client: str = ""


class Transition(NamedTuple):
    """What happens to a message now (its event, if any), and its next step (if any).

    address is kept, at acceptance, for a message whose events carry SMTP replies (which
    name it); late_bounce marks a message whose fate a late hard bounce decides
    (mta_stub.outcomes). expire_at, the message's expiry as relayed, is kept at acceptance
    for retention (Spool.forget); None: unknown, the message is kept for good.
    """

    message_id: int
    delivery_id: int
    event: Event | None
    follow_up: Scheduled | None
    address: str = ""
    late_bounce: bool = False
    expire_at: float | None = None


@dataclass(slots=True)
class _Batch:
    """A feedback batch sent on a stream and not acknowledged yet: whole outbox rows."""

    runs: list[int]
    size: int
    per_delivery: Counter[int]


@dataclass(slots=True)
class _Stream:
    owner: int
    last_seq: int = 0
    batches: dict[int, _Batch] = field(default_factory=dict)


@dataclass(slots=True)
class _Line:
    """One owner's share of the outbox, as its streams take it."""

    # Events stored, and those of them in streams' unacknowledged batches.
    stored: int = 0
    in_streams: int = 0
    # Events handed to a stream since the spool opened: numbers up to this one. Streams
    # do not outlive the process, so after a restart every stored event is sent again.
    cursor: int = 0
    # Rows of closed streams' unacknowledged batches: first in line.
    requeued: deque[int] = field(default_factory=deque)


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
        # Whether the last write failed for lack of space (a later one that commits clears it).
        self.full = False
        # Told the operation of each write refused for lack of space (the stub's metrics).
        self.on_full: Callable[[str], None] | None = None
        try:
            # No busy timeout: a killed stub's lock is gone with it, a live one's stays.
            self._db = sqlite3.connect(path, timeout=0, isolation_level=None)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open the spool {path}: {exc}") from exc
        try:
            self._prepare()
            self._owners: dict[str, int] = {
                client: owner for owner, client in self._db.execute(_Q["all_clients"])
            }
            self._clients = {owner: client for client, owner in self._owners.items()}
            self._outcomes: dict[Key, Outcomes] = {
                (row[0], row[1]): Outcomes(*row[2:]) for row in self._db.execute(_Q["all_outcomes"])
            }
            (next_event,) = self._db.execute(_Q["outbox_size"]).fetchone()
            self._lines = {owner: _Line() for owner in self._clients}
            for owner, stored in self._db.execute(_Q["outbox_by_owner"]):
                self._lines[owner].stored = stored
        except (sqlite3.Error, SpoolError) as exc:
            self._db.close()
            if isinstance(exc, SpoolError):
                raise
            hint = " (another stub is using it)" if "locked" in str(exc) else ""
            raise SpoolError(f"cannot use the spool {path}: {exc}{hint}") from exc
        self._next_event: int = next_event
        self._streams: dict[int, _Stream] = {}
        self._next_stream = 1

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
            # The new columns first: the schema's new tables and indexes come next.
            if version == 3:
                _run_script(db, _Q["migrate_3_to_4"])
            if version in (3, 4):
                _run_script(db, _Q["migrate_4_to_5"])
            if version in (0, 3, 4):
                _run_script(db, _Q["schema"])
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise SpoolError(
                    f"the spool {self.path} has schema version {version}; "
                    f"this stub reads version {SCHEMA_VERSION}"
                )

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self, operation: str = "write") -> Iterator[sqlite3.Connection]:
        """One transaction; SQLITE_FULL, in any statement or the commit, is SpoolFull."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (it does on some SQLITE_FULL errors).
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                self.full = True
                if self.on_full is not None:
                    self.on_full(operation)
                raise SpoolFull(self.path, operation, exc) from exc
            raise
        self.full = False

    # --- scenarios and clients -------------------------------------------------------------

    def scenarios(self) -> dict[Scope, Scenario]:
        """The scenario saved last for each scope."""
        return {
            Scope.from_key(key): Scenario.from_json(body)
            for key, body in self._db.execute(_Q["all_scenarios"])
        }

    def scenario(self, scope: Scope = GLOBAL) -> Scenario | None:
        """The scenario saved last for a scope, or None if none was."""
        return self.scenarios().get(scope)

    def save_scenario(self, scenario: Scenario, scope: Scope = GLOBAL) -> None:
        with self._transaction("scenario") as db:
            db.execute(_Q["save_scenario"], (scope.key, scenario.to_json()))

    def delete_scenario(self, scope: Scope) -> None:
        with self._transaction("scenario") as db:
            db.execute(_Q["delete_scenario"], (scope.key,))

    def _owner(self, client: str) -> int:
        """The number of a client, given on first use."""
        owner = self._owners.get(client)
        if owner is None:
            with self._transaction("client") as db:
                (owner,) = db.execute(_Q["add_client"], (client,)).fetchone()
            self._owners[client] = owner
            self._clients[owner] = client
            self._lines[owner] = _Line()
        return owner

    # --- messages and the schedule ---------------------------------------------------------

    def accept(self, admissions: Iterable[Transition], client: str = "") -> tuple[int, int]:
        """Holds each new message for client, its owner, records its first event, schedules
        its next step.

        One transaction, committed when this returns. A message already held (earlier,
        before a restart, or earlier in the same batch, whoever relayed it) is only
        counted, for client. Returns (accepted, duplicates).
        """
        owner = self._owner(client)
        admissions = list(admissions)
        events: list[Event] = []
        steps: list[Scheduled] = []
        addresses: list[tuple[int, str]] = []
        late: set[int] = set()
        accepted_in = Counter[int]()
        duplicates_in = Counter[int]()
        # A relay batch's messages share an expiry: usually one statement.
        by_expiry: dict[float | None, list[int]] = {}
        for admission in admissions:
            ids_of = by_expiry.get(admission.expire_at)
            if ids_of is None:
                ids_of = by_expiry[admission.expire_at] = []
            ids_of.append(admission.message_id)
        with self._transaction("relay batch") as db:
            new: set[int] = set()
            for expire_at, ids_of in by_expiry.items():
                rows = db.execute(_Q["hold_new"], (json.dumps(ids_of), expire_at))
                new.update(row[0] for row in rows)
            accepted = len(new)
            for message_id, delivery_id, event, follow_up, address, late_bounce, _ in admissions:
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
                if address:
                    addresses.append((message_id, address))
                if late_bounce:
                    late.add(message_id)
            deltas: dict[Key, Outcomes] = {}
            for delivery_id, n in accepted_in.items():
                counts = delta(deltas, (owner, delivery_id))
                counts.accepted += n
                counts.in_flight += n
            for delivery_id, n in duplicates_in.items():
                delta(deltas, (owner, delivery_id)).duplicates += n
            tally(deltas, owner, events, late)
            db.executemany(_Q["insert_step"], [_step_row(step, owner) for step in steps])
            db.executemany(_Q["insert_address"], addresses)
            self._insert_events(db, owner, events)
            self._add_outcomes(db, deltas)
        self._committed(deltas, {owner: len(events)})
        return accepted, len(admissions) - accepted

    def next_due(self) -> float | None:
        """When the earliest scheduled step is due, or None when nothing is scheduled."""
        due: float | None = self._db.execute(_Q["next_due"]).fetchone()[0]
        return due

    def fire_due(self, now: float, limit: int, advance: Callable[[Scheduled], Transition]) -> int:
        """Fires up to limit steps due by now, in one transaction; returns how many.

        advance turns each step into its event and the message's next step, both the step's
        owner's.
        """
        events: dict[int, list[Event]] = {}
        follow_ups: list[tuple[float | int, ...]] = []
        late: set[int] = set()
        with self._transaction("scheduled steps") as db:
            rows = db.execute(_Q["due_steps"], (now, limit)).fetchall()
            if not rows:
                return 0
            for row in rows:
                owner = row[3]
                scheduled = _scheduled(row, self._clients[owner])
                message_id, _delivery_id, event, follow_up, _address, late_bounce, _ = advance(
                    scheduled
                )
                if late_bounce:
                    late.add(message_id)
                if event is not None:
                    owned = events.get(owner)
                    if owned is None:
                        owned = events[owner] = []
                    owned.append(event)
                if follow_up is not None:
                    follow_ups.append(_step_row(follow_up, owner))
            deltas: dict[Key, Outcomes] = {}
            for owner, owned in events.items():
                tally(deltas, owner, owned, late)
            # The rows read are a prefix of the key: delete them in one range.
            db.execute(_Q["delete_steps_through"], rows[-1][:2])
            db.executemany(_Q["insert_step"], follow_ups)
            for owner, owned in events.items():
                self._insert_events(db, owner, owned)
            self._add_outcomes(db, deltas)
        self._committed(deltas, {owner: len(owned) for owner, owned in events.items()})
        return len(rows)

    def forget(self, before: float, limit: int) -> int:
        """Forgets up to limit held messages whose expiry is before `before` and whose
        timeline is over (no step left), the earliest expired first, with their addresses;
        returns how many.

        One transaction. A forgotten message relayed again is accepted as new; one held
        before schema version 5 (its expiry unknown) is never forgotten.
        """
        with self._transaction("retention") as db:
            forgotten = [row[0] for row in db.execute(_Q["forget_held"], (before, limit))]
            if forgotten:
                db.execute(_Q["forget_addresses"], (json.dumps(forgotten),))
        return len(forgotten)

    def addresses(self, message_ids: Iterable[int]) -> dict[int, str]:
        """The addresses kept (Transition.address) of these messages, by message id."""
        ids = json.dumps(list(message_ids))
        return dict(self._db.execute(_Q["addresses"], (ids,)))

    # --- the outbox and its streams --------------------------------------------------------

    def pending_count(self, client: str = "") -> int:
        """A client's events waiting to be handed to a stream."""
        owner = self._owners.get(client)
        if owner is None:
            return 0
        line = self._lines[owner]
        return line.stored - line.in_streams

    def open_stream(self, client: str = "") -> int:
        """Registers a feedback stream of a client; returns its id."""
        stream = self._next_stream
        self._next_stream += 1
        self._streams[stream] = _Stream(self._owner(client))
        return stream

    def unacknowledged_batches(self, stream: int) -> int:
        """Batches of events sent on a stream and not acknowledged yet."""
        return len(self._streams[stream].batches)

    def take_feedback(self, stream: int, limit: int) -> tuple[int, list[Event]]:
        """Hands up to limit waiting events to a stream as its next batch; returns (seq, events).

        Only the stream's client's events: its closed streams' first, then the oldest never
        handed out. The seq is allocated even when no event is left, for a batch of resent
        copies.
        """
        state = self._streams[stream]
        owner = state.owner
        line = self._lines[owner]
        runs: list[int] = []
        events: list[Event] = []
        room = limit
        while room > 0:
            run = self._next_run(owner, line)
            if run is None:
                break
            first, count, packed = run
            if count > room:
                if events:
                    break
                # Only faults make room for less than a row: cut it, so batches stay whole rows.
                count, packed = self._cut(owner, line, first, count, packed, room)
            if line.requeued:
                line.requeued.popleft()
            else:
                # The last event taken: a requeued row cut later gets a number below it.
                line.cursor = first + count - 1
            runs.append(first)
            events += _unpack(packed)
            room -= count
        state.last_seq += 1
        if events:
            per_delivery = Counter(event.delivery_id for event in events)
            state.batches[state.last_seq] = _Batch(runs, len(events), per_delivery)
            line.in_streams += len(events)
        return state.last_seq, events

    def _next_run(self, owner: int, line: _Line) -> tuple[int, int, bytes] | None:
        if line.requeued:
            row: tuple[int, int, bytes] = self._db.execute(
                _Q["run"], (line.requeued[0],)
            ).fetchone()
            return row
        found: tuple[int, int, bytes] | None = self._db.execute(
            _Q["runs_after"], (owner, line.cursor)
        ).fetchone()
        return found

    def _cut(
        self, owner: int, line: _Line, first: int, count: int, packed: bytes, keep: int
    ) -> tuple[int, bytes]:
        """Splits a row in two, the first keep events and the rest; returns the first part."""
        head, tail = packed[: keep * _EVENT.size], packed[keep * _EVENT.size :]
        with self._transaction("outbox row cut") as db:
            db.execute(_Q["cut_run"], (keep, head, first))
            db.execute(_Q["insert_run"], (first + keep, owner, count - keep, tail))
        if line.requeued:
            # The rest is still first in line, after the part taken now.
            line.requeued.insert(1, first + keep)
        return keep, head

    def ack(self, stream: int, seq: int) -> int:
        """Forgets a stream's batch for good; returns how many events (0 if acked before).

        One transaction: the events go with their count in the outcome record.
        """
        state = self._streams[stream]
        batch = state.batches.get(seq)
        if batch is None:
            return 0
        deltas = {
            (state.owner, delivery_id): Outcomes(unacknowledged_events=-n)
            for delivery_id, n in batch.per_delivery.items()
        }
        # Forgotten once committed: a batch whose ack could not be written stays
        # unacknowledged (its stream's close requeues it, and it is sent again).
        with self._transaction("acknowledgement") as db:
            db.executemany(_Q["delete_run"], [(first,) for first in batch.runs])
            self._add_outcomes(db, deltas)
        del state.batches[seq]
        self._committed(deltas, {state.owner: -batch.size})
        self._lines[state.owner].in_streams -= batch.size
        return batch.size

    def close_stream(self, stream: int) -> int:
        """Puts a closed stream's unacknowledged events back first in its client's line;
        returns how many."""
        requeued = self.requeue_stream(stream)
        del self._streams[stream]
        return requeued

    def requeue_stream(self, stream: int) -> int:
        """Puts a stream's unacknowledged events back first in its client's line, as if
        never sent on it (an ack of them on it is then a no-op); returns how many."""
        state = self._streams[stream]
        batches = state.batches
        line = self._lines[state.owner]
        runs = [first for seq in sorted(batches) for first in batches[seq].runs]
        # Reversed, so that they keep their order at the front of the line.
        line.requeued.extendleft(reversed(runs))
        requeued = sum(batch.size for batch in batches.values())
        line.in_streams -= requeued
        batches.clear()
        return requeued

    # --- outcomes --------------------------------------------------------------------------

    def outcomes(self, delivery_id: int = 0, client: str | None = None) -> Outcomes:
        """A copy of the record of one delivery (all when delivery_id is 0) as relayed by one
        client (all when client is None)."""
        total = Outcomes()
        owner = None
        if client is not None:
            owner = self._owners.get(client)
            if owner is None:
                return total
        for (of_owner, of_delivery), counts in self._outcomes.items():
            if (owner is None or of_owner == owner) and delivery_id in (0, of_delivery):
                total.add(counts)
        return total

    def _insert_events(self, db: sqlite3.Connection, owner: int, events: list[Event]) -> None:
        rows = []
        first = self._next_event
        for start in range(0, len(events), RUN_MAX):
            run = events[start : start + RUN_MAX]
            packed = _packer(len(run)).pack(*itertools.chain.from_iterable(run))
            rows.append((first + start, owner, len(run), packed))
        db.executemany(_Q["insert_run"], rows)
        # The next owner's events, in the same transaction, are numbered after these.
        self._next_event += len(events)

    def _add_outcomes(self, db: sqlite3.Connection, deltas: dict[Key, Outcomes]) -> None:
        db.executemany(
            _Q["add_outcomes"], [(*key, *dataclasses.astuple(d)) for key, d in deltas.items()]
        )

    def _committed(self, deltas: dict[Key, Outcomes], events_added: dict[int, int]) -> None:
        """Mirrors a committed transaction in memory (the event numbers are taken already)."""
        for key, change in deltas.items():
            delta(self._outcomes, key).add(change)
        for owner, n in events_added.items():
            self._lines[owner].stored += n


@functools.lru_cache(maxsize=RUN_MAX)
def _packer(count: int) -> struct.Struct:
    """Packs count events at once: one call, not one per event."""
    return struct.Struct("<" + _EVENT.format.lstrip("<") * count)


def _unpack(packed: bytes) -> list[Event]:
    return [
        Event(message_id, delivery_id, _KIND[kind], attempt, _REASON[reason], link, when)
        for message_id, delivery_id, kind, attempt, reason, link, when in _EVENT.iter_unpack(packed)
    ]


def _run_script(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _step_row(step: Scheduled, owner: int) -> tuple[float | int, ...]:
    due, message_id, delivery_id, expire_at, fate, kind, attempt, _client = step
    return (
        due,
        message_id,
        delivery_id,
        owner,
        expire_at,
        fate.hard_reason,
        fate.soft_bounces,
        fate.opened,
        fate.click_link,
        fate.delay_ms,
        kind,
        attempt,
        fate.soft_reason,
        fate.after or 0,
        fate.after_ms,
    )


def _scheduled(row: Any, client: str) -> Scheduled:
    (due, message_id, delivery_id, _owner, expire_at, reason, soft, opened, click, delay, kind,
     attempt, soft_reason, after, after_ms) = row  # fmt: skip
    fate = make_fate(
        _REASON[reason],
        soft,
        bool(opened),
        click,
        delay,
        _REASON[soft_reason],
        _KIND[after] if after else None,
        after_ms,
    )
    return Scheduled(due, message_id, delivery_id, expire_at, fate, _KIND[kind], attempt, client)
