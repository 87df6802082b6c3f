"""The KPI counters: sharded deltas, the locks that keep a recount exact, and stats.

Every change to a delivery's counters holds the shared counter lock of that delivery;
a recount holds it exclusively, so that it sees the logs and counters still.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping

from delivery_service.domain import feedback as fb
from delivery_service.domain.kpis import Counters
from delivery_service.store.connection import (
    Conn,
    NotFound,
    execute,
    execute_many,
    fetch_one,
    fetch_tuples,
)
from delivery_service.store.records import DeliveryFigures

# Counter shards per delivery: enough that concurrent batches rarely meet on one row.
SHARDS = 16


def any_shard() -> int:
    return random.randrange(SHARDS)


async def figures(conn: Conn, delivery_id: int) -> DeliveryFigures:
    """What the delivery's KPIs are computed from, in one statement."""
    row = await fetch_one(conn, "delivery_figures", DeliveryFigures, id=delivery_id)
    if row is None:
        raise NotFound(f"delivery {delivery_id} does not exist")
    return row


async def lock_shared(conn: Conn, delivery_ids: list[int]) -> None:
    await execute(conn, "lock_counters_shared", delivery_ids=sorted(delivery_ids))


async def add(conn: Conn, deltas: Mapping[int, Mapping[str, int]]) -> None:
    """Adds each delivery's deltas (by fb.COUNTER_NAMES) to one shard."""
    shard = any_shard()
    rows = [
        {"delivery_id": d, "shard": shard, **delta}
        for d, delta in sorted(deltas.items())
        if any(delta.values())
    ]
    if rows:
        await execute_many(conn, "add_counters", rows)


async def lock_exclusive(conn: Conn, delivery_id: int) -> None:
    """No counter of the delivery changes until the transaction ends."""
    await execute(conn, "lock_counters_exclusive", delivery_id=delivery_id)


async def recount(conn: Conn, delivery_id: int) -> tuple[int, Counters]:
    """Recomputes the counters from the sending and tracking logs and puts them in place
    of the shards; returns how many counters had drifted, and the counters."""
    await lock_exclusive(conn, delivery_id)
    live = await fetch_one(conn, "counters", Counters, delivery_id=delivery_id)
    truth = await fetch_one(conn, "recount", Counters, delivery_id=delivery_id)
    assert live is not None and truth is not None
    repaired = sum(1 for name in fb.COUNTER_NAMES if getattr(live, name) != getattr(truth, name))
    await execute(conn, "clear_counters", delivery_id=delivery_id)
    await execute(
        conn,
        "add_counters",
        delivery_id=delivery_id,
        shard=0,
        **{name: getattr(truth, name) for name in fb.COUNTER_NAMES},
    )
    await execute(conn, "set_stats", id=delivery_id, opened=truth.opened, clicked=truth.clicked)
    return repaired, truth


async def refresh_stats(conn: Conn, interval: dt.timedelta) -> int:
    """The scheduled refresh of Open % and Click %; returns how many deliveries it did."""
    return len(await fetch_tuples(conn, "refresh_stats", interval=interval))
