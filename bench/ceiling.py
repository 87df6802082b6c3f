"""Workload 3: the database's own ceiling for the ingest's row changes, with no gRPC.

On the same server and database, after the ingest and with the services stopped:

1. the events the service committed are copied out (binary COPY, kept in memory), and
   the digest of the end state is taken (every sending log's status, outcome,
   failure columns, opened, clicked; the counters);
2. the delivery goes back to the state the relay left: sending logs as relayed, no
   feedback event, only the relayed counters, its addresses unknown; then VACUUM, as
   before the ingest;
3. measured: one COPY of the events into a staging table, then one set-based statement
   (bench/queries.sql, `ceiling_apply`) per part of the messages, the parts at once on
   one connection each (as many as cores): the same rows inserted, the same sending
   logs updated, the same counters added (the delivery's, by domain, by failure), and
   the same address entries and histories written (`ceiling_addresses`, for the
   benchmark's one message per address);
4. the end state must have the same digest as the service's: same row changes.

This is the best plain psycopg I know for it: one round trip for the data (binary
COPY), no per-row work in Python, each row visited in key order, one statement and
one commit per part, and every core of the server busy.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.sql import q
from delivery_service import admin

# The aggregates and hash joins over a million rows fit in memory instead of spilling.
WORK_MEM = "256MB"
# Parts applied at once, each by its own connection: one per core of this machine.
PARTS = max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Ceiling:
    events: int
    messages: int
    seconds: float
    copy_seconds: float
    same_state: bool
    reset_seconds: float
    parts: int

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def rows_per_s(self) -> float:
        """Rows written: the events inserted and the sending logs updated."""
        return (self.events + self.messages) / self.seconds

    def info(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "messages": self.messages,
            "seconds": round(self.seconds, 3),
            "copy_seconds": round(self.copy_seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "rows_per_s": round(self.rows_per_s, 1),
            "same_state_as_service": self.same_state,
            "reset_seconds": round(self.reset_seconds, 1),
            "parts": self.parts,
        }


def _fingerprint(conn: psycopg.Connection[Any], delivery_id: int) -> tuple[Any, ...]:
    params = {"delivery_id": delivery_id}
    rows = [
        conn.execute(q(name), params).fetchone()
        for name in (
            "fingerprint_logs",
            "fingerprint_counters",
            "count_events",
            "fingerprint_breakdown",
            "fingerprint_addresses",
        )
    ]
    return tuple(value for row in rows if row is not None for value in row)


def _apply(url: str, after: int, upto: int, shard: int) -> tuple[int, int]:
    """One part of the events, in one transaction on a connection of its own."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'".encode())
        row = conn.execute(
            q("ceiling_apply"), {"after": after, "upto": upto, "shard": shard}
        ).fetchone()
        conn.execute(q("ceiling_addresses"), {"after": after, "upto": upto})
    assert row is not None
    return int(row[0]), int(row[1])


def measure(url: str, delivery_id: int, parts: int = PARTS) -> Ceiling:
    params = {"delivery_id": delivery_id}
    with psycopg.connect(url, autocommit=True) as conn:
        expected = _fingerprint(conn, delivery_id)
        chunks: list[bytes] = []
        with conn.cursor().copy(q("export_events"), params) as copy:
            chunks.extend(bytes(block) for block in copy)

        foreign = conn.execute(q("foreign_address_events"), params).fetchone()
        assert foreign == (0,), "the delivery's addresses have history of other deliveries"
        reset_started = time.perf_counter()
        conn.execute(q("ceiling_drop_staging"))
        with conn.transaction():
            conn.execute(q("reset_logs"), params)
            conn.execute(q("reset_events"), params)
            conn.execute(q("reset_feed"), params)
            conn.execute(q("reset_counters"), params)
            conn.execute(q("reset_relayed"), params)
            conn.execute(q("reset_failures"), params)
            conn.execute(q("reset_domains"), params)
            conn.execute(q("reset_breakdown"), params)
            conn.execute(q("reset_addresses"), params)
        conn.execute(q("vacuum_sending_logs"))
        conn.execute(q("vacuum_feedback"))
        reset_seconds = time.perf_counter() - reset_started

        started = time.perf_counter()
        with conn.transaction():
            conn.execute(q("ceiling_staging"))
            with conn.cursor().copy(q("ceiling_copy")) as copy:
                for chunk in chunks:
                    copy.write(chunk)
        # The planner needs the staging table's size to choose hash joins.
        conn.execute(b"ANALYZE staging")
        cuts = [i / parts for i in range(1, parts)]
        row = conn.execute(q("ceiling_parts"), {"cuts": cuts}).fetchone()
        assert row is not None
        bounds = [0, *row[0], 2**63 - 1]
        copied = time.perf_counter()
        # One connection per part, at once: the server has as many cores to apply them.
        with ThreadPoolExecutor(parts) as pool:
            done = list(
                pool.map(
                    lambda k: _apply(url, bounds[k], bounds[k + 1], k),
                    range(parts),
                )
            )
        ended = time.perf_counter()
        conn.execute(q("ceiling_drop_staging"))
        got = _fingerprint(conn, delivery_id)
    return Ceiling(
        events=sum(d[0] for d in done),
        messages=sum(d[1] for d in done),
        seconds=ended - started,
        copy_seconds=copied - started,
        same_state=got == expected,
        reset_seconds=reset_seconds,
        parts=parts,
    )


@dataclass(frozen=True)
class PreparationCeiling:
    """A segment's preparation as one plain statement (bench/queries.sql,
    `prepare_ceiling`) into a copy of a DRAFT delivery, and what it wrote."""

    messages: int
    seconds: float
    fingerprint: tuple[Any, ...]

    def info(self, same_rows: bool) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "seconds": round(self.seconds, 3),
            "same_rows_as_service": same_rows,
        }


def measure_preparation(url: str, delivery_id: int) -> PreparationCeiling:
    """Prepares a copy of the DRAFT delivery in plain SQL, timed, before PrepareDelivery
    prepares the delivery itself: both start from the same tables. Its rows go once
    their fingerprint is taken, and VACUUM makes their room reusable, as it was."""
    with psycopg.connect(url, autocommit=True) as conn:
        target = conn.execute(q("delivery_target"), {"delivery_id": delivery_id}).fetchone()
        copy = conn.execute(q("prepare_ceiling_delivery"), {"delivery_id": delivery_id}).fetchone()
        assert target is not None and copy is not None
        ceiling_id = int(copy[0])
        params = {
            "delivery_id": ceiling_id,
            "target_id": target[0],
            "segment": target[1],
            "address_pattern": admin.ADDRESS_PATTERN,
            "long_label_pattern": admin.LONG_LABEL_PATTERN,
            "largest": admin.LARGEST_DOMAINS,
        }
        started = time.perf_counter()
        with conn.transaction():
            conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'".encode())
            row = conn.execute(q("prepare_ceiling"), params).fetchone()
        seconds = time.perf_counter() - started
        assert row is not None
        fingerprint = preparation_fingerprint(conn, ceiling_id)
        forget_delivery(conn, ceiling_id)
    return PreparationCeiling(messages=int(row[0]), seconds=seconds, fingerprint=fingerprint)


def forget_delivery(
    conn: psycopg.Connection[Any], delivery_id: int, *, target: bool = False
) -> None:
    """A delivery the benchmark measured the preparation of, gone (with its target, if
    its own), and VACUUM making its room reusable."""
    found = conn.execute(q("delivery_target"), {"delivery_id": delivery_id}).fetchone()
    assert found is not None
    conn.execute(q("forget_delivery"), {"delivery_id": delivery_id})
    if target:
        conn.execute(q("forget_target"), {"target_id": found[0]})
    conn.execute(q("vacuum_sending_logs"))


def preparation_fingerprint(conn: psycopg.Connection[Any], delivery_id: int) -> tuple[Any, ...]:
    """What a preparation wrote: its rows in target order, as digests."""
    row = conn.execute(q("fingerprint_preparation"), {"delivery_id": delivery_id}).fetchone()
    assert row is not None
    return tuple(row)
