"""Preparation: a target analysed into queued sending logs and dropped recipients."""

from __future__ import annotations

from dataclasses import dataclass

from delivery_service.domain import kpis, lifecycle
from delivery_service.domain.addresses import ADDRESS_PATTERN, LONG_LABEL_PATTERN
from delivery_service.domain.preparation import DropReason
from delivery_service.store.connection import Conn, execute, fetch_all, fetch_tuples
from delivery_service.store.records import DroppedRecipient

# The dropped recipients an answer lists: the first ones, in target order.
LISTED_DROPPED = 1000


@dataclass(frozen=True)
class Analysis:
    targeted: int
    to_deliver: int
    dropped_by_reason: dict[DropReason, int]
    dropped: list[DroppedRecipient]


async def analyse(conn: Conn, delivery_id: int, target_id: int) -> Analysis:
    """Queues a message per recipient kept and records the others with their reason.
    Runs inside the caller's transaction, with the delivery locked."""
    await execute(conn, "preparation_memory")
    await execute(
        conn,
        "analyse_target",
        target_id=target_id,
        address_pattern=ADDRESS_PATTERN,
        long_label_pattern=LONG_LABEL_PATTERN,
    )
    await execute(conn, "analysis_statistics")
    await execute(conn, "rank_domains", largest=kpis.LARGEST_DOMAINS)
    await execute(conn, "queue_messages", delivery_id=delivery_id)
    await execute(conn, "record_domains", delivery_id=delivery_id)
    await execute(conn, "count_domain_messages", delivery_id=delivery_id)
    await execute(conn, "record_dropped", delivery_id=delivery_id)
    summary = dict(await fetch_tuples(conn, "analysis_summary"))
    await execute(conn, "drop_analysis")
    to_deliver = summary.pop("", 0)
    dropped = {DropReason(reason): n for reason, n in summary.items()}
    return Analysis(
        targeted=to_deliver + sum(dropped.values()),
        to_deliver=to_deliver,
        dropped_by_reason=dropped,
        dropped=await fetch_all(
            conn,
            "first_dropped",
            DroppedRecipient,
            delivery_id=delivery_id,
            limit=LISTED_DROPPED,
        ),
    )


async def set_prepared(
    conn: Conn, delivery_id: int, state: lifecycle.State, analysis: Analysis
) -> None:
    await execute(
        conn,
        "set_prepared",
        id=delivery_id,
        state=str(state),
        targeted=analysis.targeted,
        to_deliver=analysis.to_deliver,
        dropped=sum(analysis.dropped_by_reason.values()),
    )
