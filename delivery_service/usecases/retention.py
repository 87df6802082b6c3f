"""What the retention rounds share: a batch of deliveries pruned one transaction each,
within a budget of rows a round."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from delivery_service.store.connection import Conn, Database


async def prune_deliveries(
    db: Database,
    due: Iterable[int],
    prune: Callable[[Conn, int, int], Awaitable[int]],
    budget: int,
) -> int:
    """`prune(conn, delivery_id, rows left)` for each delivery due, in a transaction of
    its own, until `budget` rows went; returns how many went."""
    pruned = 0
    for delivery_id in due:
        async with db.transaction() as conn:
            pruned += await prune(conn, delivery_id, budget - pruned)
        if pruned >= budget:
            break
    return pruned
