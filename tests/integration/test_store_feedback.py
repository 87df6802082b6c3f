"""Feedback applied by storage alone, on a real database: duplicated, reordered and
concurrent batches end in the same exact figures as one clean pass."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

from delivery_service import store
from delivery_service.domain import feedback as fb
from delivery_service.domain.kpis import Counters
from delivery_service.domain.lifecycle import ApprovalStep

N = 400
K = fb.EventKind


def timeline(message_id: int, delivery_id: int, rng: random.Random) -> list[store.Event]:
    """What an MTA could report for one message, with stable event ids."""
    now = dt.datetime.now(dt.UTC)
    kinds = rng.choice(
        [
            [K.DELIVERED, K.OPENED, K.CLICKED],
            [K.HARD_BOUNCE],
            [K.SOFT_BOUNCE, K.SOFT_BOUNCE, K.DELIVERED],
            [K.SOFT_BOUNCE, K.SOFT_BOUNCE, K.EXPIRED],
            [K.DELIVERED],
        ]
    )
    return [
        store.Event(f"{message_id}:{kind.name}:{attempt}", message_id, delivery_id, kind,
                    2 if kind in (K.HARD_BOUNCE, K.SOFT_BOUNCE) else 0, attempt, 0, now)
        for attempt, kind in enumerate(kinds, start=1)
    ]  # fmt: skip


async def sent_delivery(db: store.Store, mode: fb.FeedbackMode) -> tuple[int, list[int]]:
    row = await db.create_delivery(
        store.NewDelivery(
            label="store", subject="s", body="b", links=[], feedback_mode=mode,
            validity_period=dt.timedelta(hours=1), required_approvals=[ApprovalStep.TARGET],
            segment=None, recipients=[store.Recipient(None, f"u{i}@example.com") for i in range(N)],
            request_id=None,
        )
    )  # fmt: skip
    await db.prepare(row["id"])
    await db.approve(row["id"], ApprovalStep.TARGET)
    await db.confirm(row["id"], "test")
    message_ids, _ = await db.queued_messages(row["id"], 0, N)
    return row["id"], message_ids


async def test_duplicated_reordered_concurrent_feedback_is_exact(fresh_db_url: str) -> None:
    db = store.Store(fresh_db_url, max_size=8)
    await db.open()
    try:
        rng = random.Random(3)
        results = {}
        for mode in fb.FeedbackMode:
            clean_id, clean_messages = await sent_delivery(db, mode)
            noisy_id, noisy_messages = await sent_delivery(db, mode)
            seed = rng.random()
            clean = [
                e for m in clean_messages for e in timeline(m, clean_id, random.Random(seed + m))
            ]
            noisy = [
                e
                for i, m in enumerate(noisy_messages)
                for e in timeline(m, noisy_id, random.Random(seed + clean_messages[i]))
            ]
            await db.apply_feedback(clean)
            # Every event three times, shuffled, in batches applied by 4 tasks at once.
            shuffled = noisy * 3
            rng.shuffle(shuffled)
            batches = [shuffled[i : i + 97] for i in range(0, len(shuffled), 97)]
            await asyncio.gather(*(db.apply_feedback(b) for b in batches))
            _, clean_counters = await db.delivery_and_counters(clean_id)
            _, noisy_counters = await db.delivery_and_counters(noisy_id)
            _, recounted, repaired = await db.compute_stats(noisy_id)
            assert noisy_counters == clean_counters == recounted
            assert repaired == 0
            clean_rows = await db.list_sending_logs(clean_id, None, 0, N)
            noisy_rows = await db.list_sending_logs(noisy_id, None, 0, N)
            keys = ("status", "outcome", "failure_type", "failure_reason", "opened", "clicked")
            assert [tuple(r[k] for k in keys) for r in clean_rows] == [
                tuple(r[k] for k in keys) for r in noisy_rows
            ]
            results[mode] = clean_counters
        assert results[fb.FeedbackMode.EFS] != Counters()
    finally:
        await db.close()
