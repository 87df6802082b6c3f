"""The KPI counters: sharded deltas, the locks that keep a recount exact, and stats.

Every change to a delivery's counters holds the shared counter lock of that delivery;
a recount holds it exclusively, so that it sees the logs and counters still.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping
from typing import Any

from delivery_service import clock
from delivery_service.domain import feedback as fb
from delivery_service.domain.kpis import Counters
from delivery_service.store.connection import (
    Conn,
    Database,
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
    return _found(
        delivery_id, await fetch_one(conn, "delivery_figures", DeliveryFigures, id=delivery_id)
    )


async def read_figures(db: Database, delivery_id: int) -> DeliveryFigures:
    """The same, as a short read outside any transaction (GetKpis, the watches)."""
    return _found(
        delivery_id, await db.read_one("delivery_figures", DeliveryFigures, id=delivery_id)
    )


def _found(delivery_id: int, row: DeliveryFigures | None) -> DeliveryFigures:
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
    await execute(
        conn,
        "set_stats",
        id=delivery_id,
        opened=truth.opened,
        clicked=truth.clicked,
        now=clock.now(),
    )
    return repaired + await _recount_breakdown(conn, delivery_id), truth


async def _recount_breakdown(conn: Conn, delivery_id: int) -> int:
    """The domain and failure counters recomputed and put in place; returns how many
    figures had drifted."""
    live = await figures(conn, delivery_id)
    domains = await fetch_tuples(conn, "recount_domains", delivery_id=delivery_id)
    failures = await fetch_tuples(conn, "recount_failures", delivery_id=delivery_id)
    drifted = _differences(
        {row[0]: tuple(row[1:]) for row in live.domain_counters},
        {row[0]: tuple(row[1:]) for row in domains},
    ) + _differences(
        {(t, r): (n,) for t, r, n in live.failure_counters},
        {(t, r): (n,) for t, r, n in failures},
    )
    await execute(conn, "clear_breakdown_counters", delivery_id=delivery_id)
    await execute(conn, "clear_failure_counters", delivery_id=delivery_id)
    columns = list(zip(*domains, strict=True)) or [()] * 10
    await execute(
        conn,
        "put_domain_counters",
        delivery_id=delivery_id,
        ranks=list(columns[0]),
        shards=[0] * len(domains),
        **{
            name: list(values)
            for name, values in zip(("to_deliver", *fb.COUNTER_NAMES), columns[1:], strict=True)
        },
    )
    await execute(
        conn,
        "put_failure_counters",
        delivery_id=delivery_id,
        types=[t for t, _, _ in failures],
        reasons=[r for _, r, _ in failures],
        counts=[n for _, _, n in failures],
    )
    return drifted


def _differences(live: Mapping[Any, tuple[int, ...]], truth: Mapping[Any, tuple[int, ...]]) -> int:
    """How many figures differ between two tables of counters (a missing row is zeros)."""
    width = max((len(v) for v in (*live.values(), *truth.values())), default=0)
    zeros = (0,) * width
    return sum(
        a != b
        for key in live.keys() | truth.keys()
        for a, b in zip(live.get(key, zeros), truth.get(key, zeros), strict=True)
    )


async def refresh_stats(conn: Conn, interval: dt.timedelta) -> int:
    """The scheduled refresh of Open % and Click %; returns how many deliveries it did."""
    return len(await fetch_tuples(conn, "refresh_stats", interval=interval, now=clock.now()))
