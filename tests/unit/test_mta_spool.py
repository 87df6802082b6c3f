"""The MTA stub's SQLite spool: what it committed is there again when it is reopened."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mta_stub import engine as engine_module
from mta_stub import scenarios
from mta_stub.engine import Engine, Relayed
from mta_stub.outcomes import Outcomes
from mta_stub.scenarios import GLOBAL, EventKind, Faults, Mix, Scenario, Scope, Step, Timing
from mta_stub.spool import SCHEMA_VERSION, Scheduled, Spool, SpoolError, SpoolFull, Transition

TIMING = Timing(retry_interval=10.0, engagement_delay=2.0)
NOW = 1_000_000.0
FAR = NOW + 1_000_000.0
D = 7


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "spool.sqlite3")


@pytest.fixture
def spool(path: str) -> Iterator[Spool]:
    opened = Spool(path)
    yield opened
    opened.close()


def reopen(spool: Spool) -> Spool:
    spool.close()
    return Spool(spool.path)


def admission(
    message_id: int, email: str = "x@example.com", expire_at: float = FAR, delivery_id: int = D
) -> Transition:
    """What the engine hands the spool for a message accepted at NOW."""
    fate = scenarios.decide_fate(email, message_id, None)
    step = scenarios.first_step(fate, NOW, expire_at)
    first = Scheduled(step.due, message_id, delivery_id, expire_at, fate, step.kind, step.attempt)
    address = email if scenarios.has_replies(fate) else ""
    if step.due > NOW:
        return Transition(message_id, delivery_id, None, first, address, expire_at=expire_at)
    return transition(first)._replace(address=address, expire_at=expire_at)


def transition(s: Scheduled) -> Transition:
    """A step's event and the step after it, as the engine works them out."""
    step = Step(s.kind, s.attempt, s.due)
    event = scenarios.make_event(s.message_id, s.delivery_id, s.fate, step)
    following = scenarios.next_step(s.fate, step, s.expire_at, TIMING)
    follow_up = None
    if following is not None:
        follow_up = s._replace(due=following.due, kind=following.kind, attempt=following.attempt)
    late = scenarios.awaits_late_bounce(s.fate)
    return Transition(s.message_id, s.delivery_id, event, follow_up, "", late, s.expire_at)


def event_ids(spool: Spool, limit: int = 100) -> list[str]:
    """Takes up to limit waiting events on a new stream, which is then closed."""
    stream = spool.open_stream()
    _seq, events = spool.take_feedback(stream, limit)
    spool.close_stream(stream)
    return [event.event_id for event in events]


def test_messages_held_before_a_reopen_are_duplicates_after_it(spool: Spool) -> None:
    assert spool.accept([admission(1), admission(2), admission(1)]) == (2, 1)
    spool = reopen(spool)
    assert spool.accept([admission(2), admission(3), admission(3)]) == (1, 2)
    spool = reopen(spool)
    outcomes = spool.outcomes(D)
    assert (outcomes.accepted, outcomes.duplicates, outcomes.delivered) == (3, 3, 3)
    spool.close()


def test_unacknowledged_events_are_sent_again_after_a_reopen_with_the_same_ids(
    spool: Spool,
) -> None:
    spool.accept([admission(i) for i in range(1, 6)])
    stream = spool.open_stream()
    first_seq, first = spool.take_feedback(stream, 2)
    _second_seq, second = spool.take_feedback(stream, 2)
    assert spool.ack(stream, first_seq) == 2
    # Dies here: the second batch was sent but not acknowledged, one event never sent.
    spool = reopen(spool)
    assert spool.pending_count() == 3
    assert spool.outcomes(D).unacknowledged_events == 3
    again = event_ids(spool)
    assert again == [e.event_id for e in second] + ["5:DELIVERED:1"]
    assert not {e.event_id for e in first} & set(again)
    spool.close()


def test_an_acknowledgement_is_durable(spool: Spool) -> None:
    spool.accept([admission(i) for i in range(1, 4)])
    stream = spool.open_stream()
    seq, _events = spool.take_feedback(stream, 10)
    spool.ack(stream, seq)
    spool = reopen(spool)
    assert spool.pending_count() == 0
    assert event_ids(spool) == []
    assert spool.outcomes(D).unacknowledged_events == 0
    spool.close()


def test_requeued_batches_come_first_in_order_and_split_across_smaller_batches(
    spool: Spool,
) -> None:
    spool.accept([admission(i) for i in range(1, 11)])
    first = spool.open_stream()
    seqs = [spool.take_feedback(first, 3)[0] for _ in range(3)]
    spool.ack(first, seqs[1])
    assert spool.pending_count() == 1
    assert spool.close_stream(first) == 6
    second = spool.open_stream()
    batches = []
    while events := spool.take_feedback(second, 2)[1]:
        batches.append([e.message_id for e in events])
    assert batches == [[1, 2], [3], [7, 8], [9, 10]]
    # Cut or not, each event is acknowledged once.
    for seq in range(1, 5):
        spool.ack(second, seq)
    assert spool.outcomes(D).unacknowledged_events == 0
    spool = reopen(spool)
    assert event_ids(spool) == []
    spool.close()


def test_the_schedule_is_rebuilt_and_late_steps_fire_at_once(spool: Spool) -> None:
    # soft-5 would bounce at +0, +10, +20...; it expires at +15.
    spool.accept([admission(1, "soft-5@example.com", expire_at=NOW + 15)])
    spool.accept([admission(2, "open@example.com"), admission(3, "delay-4000@example.com")])
    assert event_ids(spool) == ["1:SOFT_BOUNCE:1", "2:DELIVERED:1"]
    spool = reopen(spool)
    assert spool.next_due() == NOW + 2
    assert spool.outcomes(D).in_flight == 2
    # Reopened long after: every step is late, and fires with the time it was due.
    assert spool.fire_due(NOW + 100, 100, transition) == 3
    assert spool.fire_due(NOW + 100, 100, transition) == 1
    assert spool.fire_due(NOW + 100, 100, transition) == 0
    assert spool.next_due() is None
    stream = spool.open_stream()
    _seq, events = spool.take_feedback(stream, 100)
    assert [(e.event_id, e.event_time) for e in events] == [
        ("1:SOFT_BOUNCE:1", NOW),
        ("2:DELIVERED:1", NOW),
        ("2:OPENED:1", NOW + 2),
        ("3:DELIVERED:1", NOW + 4),
        ("1:SOFT_BOUNCE:2", NOW + 10),
        ("1:EXPIRED:2", NOW + 15),
    ]
    outcomes = spool.outcomes(D)
    assert (outcomes.delivered, outcomes.expired, outcomes.opened) == (2, 1, 1)
    assert (outcomes.soft_bounced, outcomes.in_flight) == (1, 0)
    spool.close()


def test_a_round_of_steps_that_fails_changes_nothing(spool: Spool) -> None:
    spool.accept([admission(1, "open@example.com"), admission(2, "open@example.com")])
    before = spool.outcomes(D)
    calls = 0

    def failing(scheduled: Scheduled) -> Transition:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("crash between two steps")
        return transition(scheduled)

    with pytest.raises(RuntimeError):
        spool.fire_due(FAR, 100, failing)
    assert spool.outcomes(D) == before
    spool = reopen(spool)
    assert spool.outcomes(D) == before
    assert spool.fire_due(FAR, 100, transition) == 2
    assert spool.outcomes(D).opened == 2
    spool.close()


def test_outcomes_are_exact_across_reopens(spool: Spool) -> None:
    spool.accept(
        [
            admission(1),
            admission(2, "hard-refused@example.com"),
            admission(3, "soft-1@example.com"),
            admission(4, "click-1@example.com", delivery_id=8),
        ]
    )
    spool.accept([admission(1), admission(4, delivery_id=8)])
    while spool.fire_due(FAR, 1, transition):
        spool = reopen(spool)
    stream = spool.open_stream()
    seq, events = spool.take_feedback(stream, 3)
    assert [e.delivery_id for e in events] == [D, D, D]
    spool.ack(stream, seq)
    spool = reopen(spool)
    assert spool.outcomes(D) == Outcomes(
        accepted=3,
        duplicates=1,
        delivered=2,
        hard_bounced=1,
        soft_bounced=1,
        unacknowledged_events=1,
    )
    assert spool.outcomes(8) == Outcomes(
        accepted=1, duplicates=1, delivered=1, opened=1, clicked=1, unacknowledged_events=3
    )
    total = spool.outcomes(0)
    assert (total.accepted, total.unacknowledged_events) == (4, 4)
    spool.close()


def test_the_scenario_is_kept(path: str) -> None:
    spool = Spool(path)
    assert spool.scenario() is None
    scenario = Scenario(
        Timing(0.25, 0.5),
        Mix(seed=9, hard_bounce_rate=0.5, open_rate=0.25, max_retries=2),
        Faults(duplicate_events=True, reorder_window=3, drop_stream_every=4, max_delay_ms=5),
        hold_feedback=True,
    )
    spool.save_scenario(scenario)
    spool = reopen(spool)
    assert spool.scenario() == scenario
    spool.save_scenario(Scenario(TIMING))
    spool = reopen(spool)
    assert spool.scenario() == Scenario(TIMING)
    spool.close()


def test_scoped_scenarios_are_kept_and_cleared_by_scope(path: str) -> None:
    spool = Spool(path)
    by_delivery, by_client = Scope(delivery_id=12), Scope(client_id="suite:a")
    spool.save_scenario(Scenario(TIMING, Mix(seed=1)), by_delivery)
    spool.save_scenario(Scenario(TIMING, faults=Faults(duplicate_events=True)), by_client)
    spool.save_scenario(Scenario(TIMING))
    spool = reopen(spool)
    assert spool.scenarios() == {
        by_delivery: Scenario(TIMING, Mix(seed=1)),
        by_client: Scenario(TIMING, faults=Faults(duplicate_events=True)),
        GLOBAL: Scenario(TIMING),
    }
    spool.delete_scenario(by_delivery)
    spool = reopen(spool)
    assert spool.scenario(by_delivery) is None
    assert spool.scenario(by_client) is not None
    spool.close()


def test_each_clients_events_and_outcomes_survive_a_reopen_apart(spool: Spool) -> None:
    spool.accept([admission(1), admission(2)], "a")
    spool.accept([admission(3)], "b")
    spool.accept([admission(1)], "b")
    spool = reopen(spool)
    assert (spool.pending_count("a"), spool.pending_count("b")) == (2, 1)
    stream = spool.open_stream("b")
    _seq, events = spool.take_feedback(stream, 10)
    assert [event.message_id for event in events] == [3]
    assert spool.outcomes(D, "a") == Outcomes(accepted=2, delivered=2, unacknowledged_events=2)
    assert spool.outcomes(D, "b") == Outcomes(
        accepted=1, duplicates=1, delivered=1, unacknowledged_events=1
    )
    assert spool.outcomes(D).accepted == 3
    spool.close()


def fill_up(spool: Spool) -> None:
    """No room for another page: SQLite then fails a write that needs one with SQLITE_FULL,
    "database or disk is full", as on a full disk (max_page_count cannot go below the
    pages in use)."""
    (pages,) = spool._db.execute("PRAGMA page_count").fetchone()
    spool._db.execute(f"PRAGMA max_page_count = {pages}")


def make_room(spool: Spool) -> None:
    spool._db.execute("PRAGMA max_page_count = 1073741823")


def test_a_full_spool_refuses_the_relay_batch_whole_and_takes_it_once_there_is_room(
    spool: Spool,
) -> None:
    refused: list[str] = []
    spool.on_full = refused.append
    assert spool.accept([admission(i) for i in range(1, 11)]) == (10, 0)
    stream = spool.open_stream()
    seq, events = spool.take_feedback(stream, 5)
    before = spool.outcomes(D)
    fill_up(spool)
    batch = [admission(i, f"u{i}@example.com") for i in range(11, 3011)]
    with pytest.raises(SpoolFull, match=r"spool .* is full: relay batch not written"):
        spool.accept(batch)
    assert spool.full and refused == ["relay batch"]
    # Nothing of the batch held: the same ids are new once there is room.
    assert spool.outcomes(D) == before
    assert spool.pending_count() == 5
    # What the stub holds still goes out and is acknowledged (a delete needs no new page).
    assert spool.ack(stream, seq) == len(events) == 5
    make_room(spool)
    assert spool.accept(batch) == (3000, 0)
    assert not spool.full
    spool = reopen(spool)
    outcomes = spool.outcomes(D)
    assert (outcomes.accepted, outcomes.duplicates, outcomes.delivered) == (3010, 0, 3010)
    assert outcomes.unacknowledged_events == 3010 - 5
    spool.close()


def test_an_acknowledgement_that_cannot_be_written_leaves_the_batch_unacknowledged(
    spool: Spool,
) -> None:
    spool.accept([admission(i) for i in range(1, 4)])
    stream = spool.open_stream()
    seq, _events = spool.take_feedback(stream, 10)
    real = spool._db
    failing = _FullOnDelete(real)
    spool._db = failing  # type: ignore[assignment]
    with pytest.raises(SpoolFull, match="acknowledgement not written"):
        spool.ack(stream, seq)
    spool._db = real
    assert spool.unacknowledged_batches(stream) == 1
    assert spool.outcomes(D).unacknowledged_events == 3
    # The stream's close requeues the batch: its events go out again, and are acked once.
    assert spool.close_stream(stream) == 3
    assert event_ids(spool) == ["1:DELIVERED:1", "2:DELIVERED:1", "3:DELIVERED:1"]
    again = spool.open_stream()
    seq, _events = spool.take_feedback(again, 10)
    assert spool.ack(again, seq) == 3
    assert spool.outcomes(D).unacknowledged_events == 0
    spool.close()


class _FullOnDelete:
    """A connection whose deletes fail as on a full disk (the WAL cannot grow)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def executemany(self, sql: str, rows: Any) -> Any:
        self._refuse(sql)
        return self._db.executemany(sql, rows)

    def execute(self, sql: str, *args: Any) -> Any:
        self._refuse(sql)
        return self._db.execute(sql, *args)

    @staticmethod
    def _refuse(sql: str) -> None:
        if sql.lstrip().upper().startswith("DELETE"):
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise error


async def test_the_scheduler_waits_out_a_full_spool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "FULL_RETRY_SECONDS", 0.01)
    spool = Spool()
    engine = Engine(Timing(0.01, 0.01), spool)
    real = spool.fire_due
    failures = 0

    def fire_due(*args: Any) -> int:
        nonlocal failures
        if failures < 5:
            failures += 1
            cause = sqlite3.OperationalError("database or disk is full")
            raise SpoolFull(spool.path, "scheduled steps", cause)
        return real(*args)

    monkeypatch.setattr(spool, "fire_due", fire_due)
    engine.start()
    # Two soft bounces, then delivered: the retries are steps the scheduler fires.
    session = engine.open_session("client")
    engine.relay([Relayed(1, D, "soft-2@example.com", time.time() + 60)], "client")
    kinds: list[EventKind] = []
    async with asyncio.timeout(10):
        while EventKind.DELIVERED not in kinds:
            batch = await session.next_batch()
            assert batch is not None
            kinds += [event.kind for event in batch.events]
            session.ack(batch.seq)
    assert failures == 5
    assert kinds == [EventKind.SOFT_BOUNCE, EventKind.SOFT_BOUNCE, EventKind.DELIVERED]
    engine.close_session(session)
    await engine.close()


async def test_a_restarted_engine_keeps_its_scoped_scenarios(path: str) -> None:
    engine = Engine(Timing(1.0, 1.0), Spool(path))
    engine.set_scenario(Mix(hard_bounce_rate=1.0), Faults(), 0, 0, scope=Scope(delivery_id=D))
    await engine.close()
    restarted = Engine(Timing(1.0, 1.0), Spool(path))
    restarted.relay([Relayed(1, D, "a@example.com", time.time() + 3600)], "client")
    assert restarted.outcomes(D).hard_bounced == 1
    await restarted.close()


async def test_a_restarted_engine_decides_fates_with_the_saved_scenario(path: str) -> None:
    engine = Engine(Timing(1.0, 1.0), Spool(path))
    engine.set_scenario(Mix(seed=3, hard_bounce_rate=0.5), Faults(), 300, 0, hold_feedback=True)
    saved = engine.scenario
    await engine.close()
    # Other flags at the restart: the spool's scenario wins.
    restarted = Engine(Timing(5.0, 5.0), Spool(path))
    assert restarted.scenario == saved
    assert saved.timing == Timing(0.3, 1.0)
    assert saved.hold_feedback
    assert saved.mix is not None
    ids = range(1, 201)
    # The engine runs on the real clock.
    expire_at = time.time() + 3600
    restarted.relay([Relayed(i, D, f"user{i}@example.com", expire_at) for i in ids])
    hard = [scenarios.mix_fate(saved.mix, i).hard_reason for i in ids]
    expected = sum(reason is not scenarios.BounceReason.UNSPECIFIED for reason in hard)
    assert 0 < restarted.outcomes(D).hard_bounced == expected
    await restarted.close()


def test_pending_events_after_delivery_survive_a_reopen(spool: Spool) -> None:
    spool.accept(
        [
            admission(1, "complaint@example.com"),
            admission(2, "late-hard-5000@example.com"),
            admission(3, "autoreply-700+x@example.com"),
        ]
    )
    # Died before any was due: only the delivery reports were made.
    spool = reopen(spool)
    assert event_ids(spool) == ["1:DELIVERED:1", "2:DELIVERED:1", "3:DELIVERED:1"]
    assert spool.next_due() == NOW + 0.05
    outcomes = spool.outcomes(D)
    # The late bounce decides its message's fate: in flight until it comes.
    assert (outcomes.delivered, outcomes.in_flight) == (2, 1)
    assert spool.fire_due(NOW + 100, 100, transition) == 3
    assert spool.next_due() is None
    spool = reopen(spool)
    stream = spool.open_stream()
    _seq, events = spool.take_feedback(stream, 100)
    assert [(e.event_id, e.reason, e.event_time) for e in events] == [
        ("1:DELIVERED:1", scenarios.BounceReason.UNSPECIFIED, NOW),
        ("2:DELIVERED:1", scenarios.BounceReason.UNSPECIFIED, NOW),
        ("3:DELIVERED:1", scenarios.BounceReason.UNSPECIFIED, NOW),
        ("1:COMPLAINT:1", scenarios.BounceReason.UNSPECIFIED, NOW + 0.05),
        ("3:IGNORED:1", scenarios.BounceReason.AUTO_REPLY, NOW + 0.7),
        ("2:HARD_BOUNCE:1", scenarios.BounceReason.USER_UNKNOWN, NOW + 5),
    ]
    # The addresses their replies name are kept too; a complaint names none.
    assert spool.addresses([1, 2, 3, 99]) == {
        2: "late-hard-5000@example.com",
        3: "autoreply-700+x@example.com",
    }
    assert spool.outcomes(D) == Outcomes(
        accepted=3,
        delivered=2,
        hard_bounced=1,
        late_bounced=1,
        complained=1,
        ignored=1,
        unacknowledged_events=6,
    )
    spool.close()


async def test_a_restarted_engine_sends_the_late_bounce_it_had_scheduled(path: str) -> None:
    engine = Engine(Timing(1.0, 1.0), Spool(path))
    relayed_at = time.time()
    engine.relay([Relayed(1, D, "Late-Hard-300@example.com", relayed_at + 3600)], "client")
    # Killed before the bounce was due (the scheduler never ran).
    await engine.close()
    restarted = Engine(Timing(1.0, 1.0), Spool(path))
    restarted.start()
    try:
        session = restarted.open_session("client")
        events: list[scenarios.Event] = []
        addresses: dict[int, str] = {}
        async with asyncio.timeout(5):
            while len(events) < 2:
                batch = await session.next_batch()
                assert batch is not None
                events += batch.events
                addresses.update(batch.addresses)
                session.ack(batch.seq)
        assert [e.event_id for e in events] == ["1:DELIVERED:1", "1:HARD_BOUNCE:1"]
        assert events[1].event_time == pytest.approx(relayed_at + 0.3, abs=0.05)
        assert addresses == {1: "Late-Hard-300@example.com"}
        outcomes = restarted.outcomes(D)
        assert (outcomes.hard_bounced, outcomes.late_bounced, outcomes.in_flight) == (1, 1, 0)
        restarted.close_session(session)
    finally:
        await restarted.close()


# What schema version 4 added to version 3.
_V4_COLUMNS = {
    "schedule": ("soft_reason", "after_kind", "after_ms"),
    "outcomes": ("complained", "late_bounced", "ignored"),
}


def _columns(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Each table's columns, and each index's."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        names = db.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'index')"
        ).fetchall()
        return {
            f"{kind} {name}": db.execute(f"PRAGMA {kind}_info({name})").fetchall()
            for kind, name in sorted(names)
        }


def _to_version_4(path: str) -> None:
    """Version 5 without what it added is version 4."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DROP INDEX held_by_expiry")
        db.execute("ALTER TABLE held DROP COLUMN expire_at")
        db.execute("PRAGMA user_version = 4")
        db.commit()


def test_a_spool_of_schema_version_3_is_migrated(path: str, tmp_path: Path) -> None:
    spool = Spool(path)
    spool.accept([admission(1, "soft-2@example.com"), admission(2, "open@example.com")])
    spool.close()
    _to_version_4(path)
    # Version 4 without what it added is version 3.
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DROP TABLE addresses")
        for table, columns in _V4_COLUMNS.items():
            for column in columns:
                db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 3")
        db.commit()
    spool = Spool(path)
    assert spool.outcomes(D) == Outcomes(
        accepted=2, delivered=1, soft_bounced=1, in_flight=1, unacknowledged_events=2
    )
    # Steps scheduled before the migration bounce with the one soft reason there was.
    assert spool.fire_due(FAR, 100, transition) == 2
    assert spool.fire_due(FAR, 100, transition) == 1
    assert spool.addresses([1]) == {}
    stream = spool.open_stream()
    _seq, events = spool.take_feedback(stream, 100)
    assert [(e.event_id, e.reason) for e in events][2:] == [
        ("2:OPENED:1", scenarios.BounceReason.UNSPECIFIED),
        ("1:SOFT_BOUNCE:2", scenarios.BounceReason.MAILBOX_FULL),
        ("1:DELIVERED:3", scenarios.BounceReason.UNSPECIFIED),
    ]
    spool.accept([admission(3, "late-hard@example.com")])
    assert spool.addresses([3]) == {3: "late-hard@example.com"}
    spool.close()
    _assert_current_schema(path, tmp_path)


def test_a_spool_of_schema_version_4_is_migrated_and_keeps_its_messages(
    path: str, tmp_path: Path
) -> None:
    spool = Spool(path)
    spool.accept(
        [
            admission(1, expire_at=NOW + 10),
            admission(2, "hard-refused@example.com", expire_at=NOW + 10),
            # A step left: its expiry comes from the step.
            admission(3, "late-hard-5000@example.com", expire_at=NOW + 10),
        ]
    )
    spool.close()
    _to_version_4(path)
    spool = Spool(path)
    assert spool.outcomes(D) == Outcomes(
        accepted=3, delivered=1, hard_bounced=1, in_flight=1, unacknowledged_events=3
    )
    assert spool.accept([admission(i) for i in (1, 2, 3)]) == (0, 3)
    assert spool.addresses([2, 3]) == {
        2: "hard-refused@example.com",
        3: "late-hard-5000@example.com",
    }
    assert spool.fire_due(FAR, 100, transition) == 1
    # The expiry of 1 and 2 was not kept: they are kept for good. 3's came from its step.
    assert spool.forget(FAR, 100) == 1
    assert spool.accept([admission(i) for i in (1, 2, 3)]) == (1, 2)
    assert spool.addresses([2, 3]) == {2: "hard-refused@example.com"}
    spool.close()
    _assert_current_schema(path, tmp_path)


def _assert_current_schema(path: str, tmp_path: Path) -> None:
    """The spool at path has this stub's schema version, and a new spool's columns."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    fresh = str(tmp_path / "fresh.sqlite3")
    Spool(fresh).close()
    assert _columns(path) == _columns(fresh)


def _held(spool: Spool) -> list[int]:
    return [row[0] for row in spool._db.execute("SELECT message_id FROM held ORDER BY 1")]


def test_forget_removes_only_expired_messages_whose_timeline_is_over(spool: Spool) -> None:
    soon = NOW + 10
    spool.accept(
        [
            admission(1, expire_at=soon),
            admission(2, "hard-refused@example.com", expire_at=soon),
            # Delivered, its late bounce due after the expiry: a step left.
            admission(3, "late-hard-20000@example.com", expire_at=soon),
            # A delivery report still to come.
            admission(4, "delay-4000@example.com", expire_at=soon),
            admission(5, "hard-refused@example.com", expire_at=FAR),
        ]
    )
    # Of an unknown expiry (as before schema version 5): kept for good.
    spool.accept([admission(6)._replace(expire_at=None)])
    # Not expired before the time given: nothing.
    assert spool.forget(soon, 100) == 0
    assert spool.forget(soon + 1, 100) == 2
    assert _held(spool) == [3, 4, 5, 6]
    assert spool.addresses(range(1, 7)) == {
        3: "late-hard-20000@example.com",
        5: "hard-refused@example.com",
    }
    # Once their steps have fired (4 delivered, 3 bounced), they go too.
    assert spool.fire_due(NOW + 5, 100, transition) == 1
    assert spool.forget(soon + 1, 100) == 1
    assert spool.fire_due(NOW + 20, 100, transition) == 1
    assert spool.next_due() is None
    spool = reopen(spool)
    assert spool.forget(soon + 1, 100) == 1
    assert _held(spool) == [5, 6]
    assert spool.addresses(range(1, 7)) == {5: "hard-refused@example.com"}
    # The feedback and the record are untouched: forget is about deduplication only.
    assert spool.outcomes(D) == Outcomes(
        accepted=6, delivered=3, hard_bounced=3, late_bounced=1, unacknowledged_events=7
    )
    spool.close()


def test_a_forgotten_message_relayed_again_is_new_and_a_kept_one_a_duplicate(
    spool: Spool,
) -> None:
    spool.accept([admission(1, expire_at=NOW + 10), admission(2, expire_at=NOW + 100)])
    assert spool.forget(NOW + 50, 100) == 1
    spool = reopen(spool)
    assert spool.accept([admission(1, expire_at=NOW + 10), admission(2)]) == (1, 1)
    assert event_ids(spool) == ["1:DELIVERED:1", "2:DELIVERED:1", "1:DELIVERED:1"]
    assert (spool.outcomes(D).accepted, spool.outcomes(D).duplicates) == (3, 1)
    spool.close()


def test_forget_takes_at_most_its_limit_the_earliest_expired_first(spool: Spool) -> None:
    # Two relay batches of different expiries, the later one first.
    spool.accept([admission(i, expire_at=NOW + 20) for i in range(1, 6)])
    spool.accept([admission(i, expire_at=NOW + 10) for i in range(6, 11)])
    assert spool.forget(FAR, 3) == 3
    assert _held(spool) == [1, 2, 3, 4, 5, 9, 10]
    assert spool.forget(FAR, 3) == 3
    assert _held(spool) == [2, 3, 4, 5]
    assert spool.forget(FAR, 3) == 3
    assert spool.forget(FAR, 3) == 1
    assert spool.forget(FAR, 3) == 0
    assert _held(spool) == []


def test_a_retention_round_that_cannot_be_written_forgets_nothing(spool: Spool) -> None:
    refused: list[str] = []
    spool.on_full = refused.append
    spool.accept([admission(1, "hard-refused@example.com", expire_at=NOW + 10)])
    real = spool._db
    spool._db = _FullOnDelete(real)  # type: ignore[assignment]
    with pytest.raises(SpoolFull, match="retention not written"):
        spool.forget(FAR, 100)
    spool._db = real
    assert spool.full and refused == ["retention"]
    assert _held(spool) == [1]
    assert spool.addresses([1]) == {1: "hard-refused@example.com"}
    assert spool.forget(FAR, 100) == 1
    assert not spool.full
    spool.close()


async def test_the_engine_forgets_in_batches_with_its_retention(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine_module, "FORGET_LIMIT", 4)
    spool = Spool()
    engine = Engine(TIMING, spool, retention=100.0)
    batches: list[int] = []
    engine.on_forgotten = batches.append
    now = time.time()
    # Expired long enough ago, just now, and not yet.
    engine.relay([Relayed(i, D, "a@example.com", now - 200) for i in range(1, 11)])
    engine.relay([Relayed(i, D, "a@example.com", now - 50) for i in range(11, 14)])
    engine.relay([Relayed(i, D, "a@example.com", now + 3600) for i in range(14, 16)])
    with caplog.at_level("INFO", logger=engine_module.__name__):
        assert await engine.forget_expired() == 10
    assert batches == [4, 4, 2]
    assert "forgot 10 messages expired before" in caplog.text
    assert _held(spool) == list(range(11, 16))
    assert engine.relay([Relayed(i, D, "a@example.com", now - 200) for i in (1, 11, 14)]) == (
        1,
        2,
    )
    await engine.close()


async def test_the_engine_forgets_periodically(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "RETENTION_ROUND_MIN_SECONDS", 0.01)
    spool = Spool()
    # Rounds every retention, when shorter than a minute.
    engine = Engine(TIMING, spool, retention=0.05)
    forgotten = asyncio.Event()
    engine.on_forgotten = lambda n: forgotten.set()
    engine.start()
    try:
        engine.relay([Relayed(1, D, "a@example.com", time.time())])
        async with asyncio.timeout(5):
            await forgotten.wait()
        assert _held(spool) == []
    finally:
        await engine.close()


def test_a_spool_in_use_is_refused(spool: Spool) -> None:
    with pytest.raises(SpoolError, match="another stub is using it"):
        Spool(spool.path)


def test_a_spool_of_another_schema_version_is_refused(path: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(SpoolError, match="schema version 99"):
        Spool(path)


def test_a_spool_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="cannot open the spool"):
        Spool(str(tmp_path / "missing" / "spool.sqlite3"))


def test_the_in_memory_spool_keeps_nothing() -> None:
    spool = Spool()
    spool.accept([admission(1)])
    spool.close()
    fresh = Spool()
    assert fresh.accept([admission(1)]) == (1, 0)
    assert fresh.outcomes(D).accepted == 1
    assert fresh.scenario() is None
    fresh.close()


def test_event_kinds_and_reasons_come_back_as_enums(spool: Spool) -> None:
    spool.accept([admission(1, "hard-unreachable@example.com")])
    spool = reopen(spool)
    stream = spool.open_stream()
    (event,) = spool.take_feedback(stream, 10)[1]
    assert event.kind is EventKind.HARD_BOUNCE
    assert event.reason is scenarios.BounceReason.UNREACHABLE
    spool.close()


@pytest.mark.parametrize("seed", range(5))
def test_random_takes_acks_closes_and_reopens_lose_nothing_and_ack_each_event_once(
    spool: Spool, seed: int
) -> None:
    rng = random.Random(seed)
    clients = ("a", "b")
    accepted = 0
    owner: dict[int, str] = {}
    acked = Counter[int]()
    # Per open stream, its client and its unacknowledged batches: seq -> message ids.
    streams: dict[int, tuple[str, dict[int, list[int]]]] = {}

    def in_streams(client: str) -> int:
        return sum(
            len(b) for c, batches in streams.values() if c == client for b in batches.values()
        )

    for _ in range(300):
        op = rng.choice(["accept", "take", "take", "ack", "close", "reopen"])
        if op == "accept" or accepted == 0:
            count = rng.randint(1, 30)
            client = rng.choice(clients)
            new = range(accepted + 1, accepted + count + 1)
            spool.accept([admission(i) for i in new], client)
            owner.update(dict.fromkeys(new, client))
            accepted += count
        elif op == "take":
            if len(streams) < 3 and rng.random() < 0.3:
                client = rng.choice(clients)
                streams[spool.open_stream(client)] = (client, {})
            if streams:
                stream = rng.choice(list(streams))
                client, batches = streams[stream]
                seq, events = spool.take_feedback(stream, rng.randint(1, 12))
                ids = [e.message_id for e in events]
                in_flight = {i for _c, bs in streams.values() for b in bs.values() for i in b}
                assert not set(ids) & (in_flight | set(acked))
                assert {owner[i] for i in ids} <= {client}
                if ids:
                    batches[seq] = ids
        elif op == "ack" and any(batches for _c, batches in streams.values()):
            stream = rng.choice([s for s, (_c, batches) in streams.items() if batches])
            batches = streams[stream][1]
            seq = rng.choice(list(batches))
            assert spool.ack(stream, seq) == len(batches[seq])
            acked.update(batches.pop(seq))
        elif op == "close" and streams:
            stream = rng.choice(list(streams))
            spool.close_stream(stream)
            del streams[stream]
        elif op == "reopen":
            spool = reopen(spool)
            streams.clear()
        for client in clients:
            unacknowledged = sum(1 for i, c in owner.items() if c == client and i not in acked)
            assert spool.outcomes(D, client).unacknowledged_events == unacknowledged
            assert spool.pending_count(client) == unacknowledged - in_streams(client)
    spool = reopen(spool)
    for client in clients:
        stream = spool.open_stream(client)
        while True:
            seq, events = spool.take_feedback(stream, rng.randint(1, 500))
            if not events:
                break
            spool.ack(stream, seq)
            acked.update(e.message_id for e in events)
    assert acked == Counter(range(1, accepted + 1))
    assert spool.outcomes(D).unacknowledged_events == 0
    spool.close()
