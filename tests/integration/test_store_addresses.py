"""The address table by storage alone, on real databases: one delivery stream's feedback
applied in time order, and the same feedback shuffled, sent twice and applied by
concurrent batches, end in the same address table, and it is the one the domain's fold
(domain.quarantine) gives from the events."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from typing import NamedTuple

import pytest

from delivery_service.domain import feedback as fb
from delivery_service.domain import quarantine as q
from delivery_service.domain.lifecycle import ApprovalStep
from delivery_service.domain.requests import NewDelivery, Recipient
from delivery_service.store import ingest, relay
from delivery_service.store.connection import Database
from delivery_service.usecases import addresses as addresses_uc
from delivery_service.usecases import deliveries
from tests.conftest import fresh_database

K = fb.EventKind
ADDRESSES = [f"user{i}@Example.com" for i in range(60)]
DELIVERIES = 4
SECOND = 1_000_000
# Short enough that several soft errors count within the few minutes event times span.
RULES = q.Rules(significant_interval=20 * SECOND, threshold=3)
REPLIES = {
    fb.FailureReason.USER_UNKNOWN: (550, "5.1.1", "Recipient address rejected: User unknown"),
    fb.FailureReason.MAILBOX_FULL: (452, "4.2.2", "Mailbox full"),
    fb.FailureReason.INVALID_DOMAIN: (451, "4.1.2", "Domain not found"),
}


class Event(NamedTuple):
    event_id: str
    message_id: int
    delivery_id: int
    kind: fb.EventKind
    reason: int
    micros: int


async def relayed_delivery(db: Database, label: str) -> tuple[int, list[int]]:
    created = await deliveries.create(
        db,
        NewDelivery(
            label=label, subject="s", body="b", links=[], feedback_mode=fb.FeedbackMode.EFS,
            validity_period=dt.timedelta(hours=1), required_approvals=[ApprovalStep.TARGET],
            segment=None, recipients=[Recipient(None, a) for a in ADDRESSES], request_id=None,
        ),
        "test",
    )  # fmt: skip
    await deliveries.prepare(db, created.id)
    await deliveries.approve(db, created.id, ApprovalStep.TARGET)
    await deliveries.confirm(db, created.id, "test")
    message_ids, _ = await relay.queued_messages(db, created.id, 0, len(ADDRESSES))
    await relay.mark_relayed(db, created.id, fb.FeedbackMode.EFS, 0, message_ids[-1])
    return created.id, message_ids


def timeline(message_id: int, delivery_id: int, start: int, rng: random.Random) -> list[Event]:
    """What an MTA could report of one message, at times from `start`, with stable ids."""
    soft = rng.choice([fb.FailureReason.MAILBOX_FULL, fb.FailureReason.INVALID_DOMAIN])
    retries: list[tuple[fb.EventKind, int]] = [(K.SOFT_BOUNCE, soft)] * rng.randint(1, 4)
    kinds: list[tuple[fb.EventKind, int]] = rng.choice(
        [
            [(K.DELIVERED, 0)],
            [*retries, (K.DELIVERED, 0)],
            [*retries, (K.EXPIRED, 0)],
            [(K.HARD_BOUNCE, fb.FailureReason.USER_UNKNOWN)],
            [(K.DELIVERED, 0), (K.COMPLAINT, 0)],
            [(K.DELIVERED, 0), (K.HARD_BOUNCE, fb.FailureReason.USER_UNKNOWN)],
            [(K.DELIVERED, 0), (K.IGNORED, fb.FailureReason.AUTO_REPLY)],
        ]
    )
    return [
        Event(f"{message_id}:{i}", message_id, delivery_id, kind, reason,
              start + i * rng.randint(5, 30) * SECOND)
        for i, (kind, reason) in enumerate(kinds)
    ]  # fmt: skip


def batch_of(events: list[Event]) -> ingest.EventBatch:
    replies = [REPLIES.get(fb.FailureReason(e.reason), (0, "", "")) for e in events]
    return ingest.EventBatch(
        event_ids=[e.event_id for e in events],
        message_ids=[e.message_id for e in events],
        delivery_ids=[e.delivery_id for e in events],
        kinds=[int(e.kind) for e in events],
        reasons=[e.reason for e in events],
        attempts=[1 for _ in events],
        link_indexes=[0 for _ in events],
        event_micros=[e.micros for e in events],
        smtp_codes=[r[0] for r in replies],
        smtp_statuses=[r[1] for r in replies],
        smtp_texts=[r[2] for r in replies],
    )


async def stream(db: Database, seed: int, now: int) -> tuple[list[Event], dict[int, str]]:
    """Deliveries to the same addresses, and their feedback: each delivery's messages
    start a minute after the last's, so an address's errors span deliveries."""
    rng = random.Random(seed)
    events: list[Event] = []
    address_of: dict[int, str] = {}
    for d in range(DELIVERIES):
        delivery_id, message_ids = await relayed_delivery(db, f"d{d}")
        for message_id, address in zip(message_ids, ADDRESSES, strict=True):
            address_of[message_id] = address.lower()
            # Within the times the ingest believes: the relay (now) minus 5 minutes on.
            start = now - 4 * 60 * SECOND + d * 60 * SECOND + rng.randint(0, 20) * SECOND
            events += timeline(message_id, delivery_id, start, rng)
    return events, address_of


async def apply_settled(db: Database, batches: list[list[Event]], concurrency: int) -> None:
    """Batches applied `concurrency` at a time; those with events that must wait (a
    complaint ahead of its delivery report) again once the rest are in, as the ingest
    retries them."""
    for _ in range(10):
        waiting = []
        for i in range(0, len(batches), concurrency):
            group = batches[i : i + concurrency]
            results = await asyncio.gather(
                *(ingest.apply_feedback(db, batch_of(b), final=False, rules=RULES) for b in group)
            )
            waiting += [b for b, r in zip(group, results, strict=True) if r.deferred]
        if not waiting:
            return
        batches = waiting
    raise AssertionError(f"{len(batches)} batches still wait")


ENTRY = """
SELECT address, status, error_count,
       (extract(epoch FROM first_error_time) * 1000000)::bigint,
       (extract(epoch FROM last_error_time) * 1000000)::bigint,
       failure_type, failure_reason, smtp_code, smtp_status, smtp_text, delivery_id, message_id,
       (extract(epoch FROM update_time) * 1000000)::bigint, changed_by
FROM addresses ORDER BY address
"""
HISTORY = """
SELECT address, (extract(epoch FROM event_time) * 1000000)::bigint, delivery_id, event_id,
       signal, after FROM address_events ORDER BY 1, 2, 3, 4
"""


async def table(db: Database, query: str) -> list[tuple[object, ...]]:
    async with db.connection() as conn:
        return await (await conn.execute(query)).fetchall()


def reference(events: list[Event], address_of: dict[int, str]) -> list[tuple[object, ...]]:
    """The address table as the domain folds it, from every event at once."""
    by_address: dict[str, list[q.AddressEvent]] = {a.lower(): [] for a in ADDRESSES}
    for e in events:
        signal = q.signal_of(e.kind)
        if signal is None:
            continue
        code, status, text = REPLIES.get(fb.FailureReason(e.reason), (0, "", ""))
        failure_type = {q.Signal.HARD_ERROR: fb.FailureType.HARD,
                        q.Signal.SOFT_ERROR: fb.FailureType.SOFT}.get(signal, 0)  # fmt: skip
        event = q.AddressEvent(
            e.micros, e.delivery_id, e.event_id, signal, e.message_id,
            failure_type, e.reason, code, status, text,
        )  # fmt: skip
        by_address[address_of[e.message_id]].append(event)
    rows = []
    for address, address_events in sorted(by_address.items()):
        state = q.INITIAL
        for _, after in q.fold(q.INITIAL, address_events, RULES):
            state = after if after is not None else state
        rows.append((address, int(state.status), *(tuple(vars_of(state))[1:])))
    return rows


def vars_of(state: q.AddressState) -> list[object]:
    return [getattr(state, f) for f in q.AddressState.__dataclass_fields__]


async def test_the_address_table_does_not_depend_on_the_order_feedback_arrives_in(
    pg_url: str, template_db: str
) -> None:
    tables = []
    # One time for both databases: the same events.
    now = int(dt.datetime.now(dt.UTC).timestamp() * SECOND)
    for shuffled in (False, True):
        with fresh_database(pg_url, template_db) as url:
            db = Database(url, max_size=8)
            await db.open()
            try:
                events, address_of = await stream(db, seed=5, now=now)
                if shuffled:
                    # Every event twice, in any order, 4 batches at a time.
                    noisy = events * 2
                    random.Random(7).shuffle(noisy)
                    batches = [noisy[i : i + 37] for i in range(0, len(noisy), 37)]
                    await apply_settled(db, batches, concurrency=4)
                else:
                    ordered = sorted(events, key=lambda e: e.micros)
                    batches = [ordered[i : i + 50] for i in range(0, len(ordered), 50)]
                    await apply_settled(db, batches, concurrency=1)
                tables.append((await table(db, ENTRY), await table(db, HISTORY)))
            finally:
                await db.close()
    (in_order, in_order_history), (shuffled_table, shuffled_history) = tables
    assert shuffled_table == in_order
    assert shuffled_history == in_order_history
    assert in_order == reference(events, address_of)
    statuses = {row[1] for row in in_order}
    # The stream reaches every status: the comparison is not between empty tables.
    assert statuses == {int(s) for s in q.AddressStatus}, statuses


async def test_the_retention_beside_the_feedback_leaves_the_table_as_the_fold_says(
    fresh_db_url: str,
) -> None:
    """Two deliveries' feedback applied, their event logs pruned; the next two's feedback
    applied 4 batches at a time while the address histories' retention walks the table
    in small chunks. Each entry ends as the domain folds every event, or, where the
    retention forgot a VALID entry (SPEC.md: the same as none) before the later events
    came, as they fold from no entry: the one thing it forgets is an old released
    entry's last failure."""
    db = Database(fresh_db_url, max_size=8)
    await db.open()
    try:
        now = int(dt.datetime.now(dt.UTC).timestamp() * SECOND)
        events, address_of = await stream(db, seed=11, now=now)
        first_two = sorted({e.delivery_id for e in events})[:2]
        old = [e for e in events if e.delivery_id in first_two]
        new = [e for e in events if e.delivery_id not in first_two]
        await apply_settled(db, [old[i : i + 50] for i in range(0, len(old), 50)], 1)
        # No feedback comes any more from before the later deliveries' first event.
        horizon = min(e.micros for e in new)
        assert any(e.micros < horizon for e in old)
        async with db.connection() as conn:
            await conn.execute(
                "UPDATE deliveries SET events_pruned_time = now() WHERE id = ANY(%s)",
                (first_two,),
            )
            await conn.execute(
                "UPDATE deliveries SET confirm_time = timestamptz 'epoch'"
                " + (%s + 300000000) * interval '1 microsecond' WHERE NOT id = ANY(%s)",
                (horizon, first_two),
            )

        pruned = addresses_uc.HistoryPruned()
        applied = asyncio.Event()

        async def retention() -> None:
            after = ""
            while True:
                round_ = await addresses_uc.prune_history(db, after)
                pruned.events += round_.events
                pruned.entries += round_.entries
                after = round_.after or ""
                if applied.is_set() and round_.after is None:
                    return
                await asyncio.sleep(0)

        async def feedback() -> None:
            shuffled = new * 2
            random.Random(3).shuffle(shuffled)
            await apply_settled(db, [shuffled[i : i + 23] for i in range(0, len(shuffled), 23)], 4)
            applied.set()

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(addresses_uc, "HISTORY_ENTRIES_PER_CHUNK", 5)
            patch.setattr(addresses_uc, "HISTORY_ENTRIES_PER_ROUND", 10)
            await asyncio.gather(retention(), feedback())
        assert pruned.events > 0 and pruned.entries > 0, pruned

        every_event = {row[0]: row for row in reference(events, address_of)}
        from_no_entry = {row[0]: row for row in reference(new, address_of)}
        valid_before = {
            row[0] for row in reference(old, address_of) if row[1] == q.AddressStatus.VALID
        }
        entries = {row[0]: row for row in await table(db, ENTRY)}
        for address, folded in every_event.items():
            got = entries.get(address, (address, *INITIAL_ROW))
            if got != folded:
                assert address in valid_before and got == from_no_entry[address], (
                    address, got, folded
                )  # fmt: skip
        assert 0 < len(valid_before) < len(every_event)
    finally:
        await db.close()


# An entry's columns after the address, as ENTRY reads them, for no entry at all.
INITIAL_ROW = (int(q.INITIAL.status), *vars_of(q.INITIAL)[1:])
