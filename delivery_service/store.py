"""Storage: the only module that speaks SQL or imports psycopg.

Queries live in sql/queries.sql; driver errors become the exceptions below.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool

from delivery_service.domain import feedback as fb
from delivery_service.domain import lifecycle
from delivery_service.domain.addresses import ADDRESS_PATTERN
from delivery_service.domain.kpis import Counters

Row = dict[str, Any]

log = logging.getLogger(__name__)

# Counter shards per delivery: enough that concurrent batches rarely meet on one row.
COUNTER_SHARDS = 16


class StoreError(Exception):
    """Base of the storage errors the service maps to gRPC statuses."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """The change is not allowed in the current state (FAILED_PRECONDITION)."""


class Unavailable(StoreError):
    """The database cannot be reached right now."""


class Rejected(StoreError):
    """The database refused the data itself: trying it again would fail again."""


def _load_queries() -> dict[str, str]:
    text = (resources.files("delivery_service") / "sql" / "queries.sql").read_text("utf-8")
    queries: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = chunk.partition("\n")
        lines = [line for line in body.splitlines() if not line.startswith("--")]
        queries[name.strip()] = "\n".join(lines).strip().rstrip(";")
    return queries


QUERIES = _load_queries()


def _q(name: str) -> bytes:
    return QUERIES[name].encode()


@dataclass
class EventBatch:
    """Feedback events as the stream hands them to storage: one column per field,
    in arrival order, each event id once."""

    event_ids: list[str] = field(default_factory=list)
    message_ids: list[int] = field(default_factory=list)
    delivery_ids: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    reasons: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    link_indexes: list[int] = field(default_factory=list)
    # Microseconds since the Unix epoch: an int is far cheaper to send than a datetime.
    event_micros: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)

    def __getitem__(self, part: slice) -> EventBatch:
        """The events in a slice of the batch, as a batch."""
        return EventBatch(*(getattr(self, f.name)[part] for f in fields(self)))


@dataclass(frozen=True)
class IngestResult:
    applied: int = 0
    duplicates: int = 0
    unknown: int = 0

    def __add__(self, other: IngestResult) -> IngestResult:
        return IngestResult(
            self.applied + other.applied,
            self.duplicates + other.duplicates,
            self.unknown + other.unknown,
        )


@dataclass(frozen=True)
class Analysis:
    delivery: Row
    targeted: int
    to_deliver: int
    dropped_by_reason: dict[str, int]
    dropped: list[Row]


@dataclass(frozen=True)
class Recipient:
    profile_id: str | None
    email: str | None


@dataclass(frozen=True)
class NewDelivery:
    label: str
    subject: str
    body: str
    links: list[str]
    feedback_mode: fb.FeedbackMode
    validity_period: dt.timedelta
    required_approvals: list[lifecycle.ApprovalStep]
    segment: str | None
    recipients: list[Recipient]
    request_id: str | None


class Store:
    def __init__(self, conninfo: str, *, min_size: int = 2, max_size: int = 20) -> None:
        self.pool = AsyncConnectionPool(
            conninfo,
            connection_class=psycopg.AsyncConnection[Row],
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
            # A connection broken by a database restart is replaced, not handed out.
            check=AsyncConnectionPool.check_connection,
            name="delivery",
        )

    async def open(self, timeout: float = 30.0) -> None:
        await self.pool.open(wait=True, timeout=timeout)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        """A pooled connection, in autocommit; an unreachable database is Unavailable."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise Unavailable(str(exc)) from exc
        except TimeoutError as exc:  # the pool had no connection in time
            raise Unavailable("no database connection available") from exc

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    @staticmethod
    async def _one(conn: psycopg.AsyncConnection[Row], name: str, **params: Any) -> Row | None:
        cur = await conn.execute(_q(name), params)
        return await cur.fetchone()

    @staticmethod
    async def _all(conn: psycopg.AsyncConnection[Row], name: str, **params: Any) -> list[Row]:
        cur = await conn.execute(_q(name), params)
        return await cur.fetchall()

    # --- operators -------------------------------------------------------------------

    async def create_operator(self, name: str, token_hash: bytes, roles: list[str]) -> None:
        try:
            async with self._tx() as conn:
                await conn.execute(
                    _q("create_operator"),
                    {"name": name, "token_hash": token_hash, "roles": roles},
                )
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict(f"an operator named {name!r} already exists") from exc

    async def find_operator(self, token_hash: bytes) -> Row | None:
        async with self._tx() as conn:
            return await self._one(conn, "find_operator", token_hash=token_hash)

    # --- profiles --------------------------------------------------------------------

    async def upsert_profiles(self, profiles: list[dict[str, Any]]) -> tuple[int, int]:
        async with self._tx() as conn:
            rows = await self._all(conn, "upsert_profiles", profiles=json.dumps(profiles))
        created = sum(1 for r in rows if r["created"])
        return created, len(rows) - created

    async def profile_exists(self, profile_id: str) -> bool:
        async with self._tx() as conn:
            return await self._one(conn, "profile_exists", profile_id=profile_id) is not None

    # --- deliveries ------------------------------------------------------------------

    async def _insert_target(
        self,
        conn: psycopg.AsyncConnection[Row],
        segment: str | None,
        recipients: Sequence[Recipient],
    ) -> int:
        row = await self._one(conn, "insert_target", segment=segment)
        assert row is not None
        target_id: int = row["id"]
        if segment is None:
            async with conn.cursor().copy(_q("copy_target_recipients")) as copy:
                for position, r in enumerate(recipients):
                    await copy.write_row((target_id, position, r.profile_id, r.email))
        return target_id

    async def create_delivery(self, new: NewDelivery) -> Row:
        """Creates a DRAFT delivery; a repeated request_id returns the first one."""
        if new.request_id:
            existing = await self._by_request(new.request_id)
            if existing is not None:
                return existing
        try:
            delivery_id = await self._insert_delivery(new)
        except _RequestRace:
            # A concurrent request with the same request_id won; ours was rolled back.
            assert new.request_id
            existing = await self._by_request(new.request_id)
            assert existing is not None
            return existing
        return await self.get_delivery(delivery_id)

    async def _insert_delivery(self, new: NewDelivery) -> int:
        async with self._tx() as conn:
            target_id = await self._insert_target(conn, new.segment, new.recipients)
            row = await self._one(
                conn,
                "insert_delivery",
                label=new.label,
                subject=new.subject,
                body=new.body,
                links=new.links,
                target_id=target_id,
                feedback_mode=str(new.feedback_mode),
                validity_period=new.validity_period,
                required_approvals=[str(s) for s in new.required_approvals],
                request_id=new.request_id or None,
                recurring_delivery_id=None,
            )
            if row is None:
                raise _RequestRace()
            delivery_id: int = row["id"]
        return delivery_id

    async def _by_request(self, request_id: str) -> Row | None:
        async with self._tx() as conn:
            row = await self._one(conn, "delivery_id_by_request", request_id=request_id)
        return None if row is None else await self.get_delivery(row["id"])

    async def get_delivery(self, delivery_id: int) -> Row:
        async with self._tx() as conn:
            row = await self._one(conn, "get_delivery", id=delivery_id)
        if row is None:
            raise NotFound(f"delivery {delivery_id} does not exist")
        return row

    async def list_deliveries(
        self,
        *,
        before_id: int,
        state: lifecycle.State | None,
        recurring_delivery_id: int | None,
        limit: int,
    ) -> list[Row]:
        async with self._tx() as conn:
            return await self._all(
                conn,
                "list_deliveries",
                before_id=before_id,
                state=None if state is None else str(state),
                recurring_delivery_id=recurring_delivery_id,
                limit=limit,
            )

    async def _lock(self, conn: psycopg.AsyncConnection[Row], delivery_id: int) -> Row:
        row = await self._one(conn, "lock_delivery", id=delivery_id)
        if row is None:
            raise NotFound(f"delivery {delivery_id} does not exist")
        return row

    async def _analyse(self, conn: psycopg.AsyncConnection[Row], delivery: Row) -> Analysis:
        """Preparation, inside the caller's transaction (the delivery is locked)."""
        delivery_id = delivery["id"]
        await conn.execute(
            _q("analyse_target"),
            {"target_id": delivery["target_id"], "address_pattern": ADDRESS_PATTERN},
        )
        await conn.execute(
            _q("queue_messages"), {"delivery_id": delivery_id, "status": fb.Status.QUEUED}
        )
        await conn.execute(_q("record_dropped"), {"delivery_id": delivery_id})
        summary = {r["reason"]: r["n"] for r in await self._all(conn, "analysis_summary")}
        to_deliver = summary.pop("", 0)
        dropped = sum(summary.values())
        required = [lifecycle.ApprovalStep(s) for s in delivery["required_approvals"]]
        await conn.execute(
            _q("set_prepared"),
            {
                "id": delivery_id,
                "state": str(lifecycle.after_preparation(required)),
                "targeted": to_deliver + dropped,
                "to_deliver": to_deliver,
                "dropped": dropped,
            },
        )
        await conn.execute("DROP TABLE analysis")
        first = await self._all(conn, "first_dropped", delivery_id=delivery_id, limit=1000)
        return Analysis(
            delivery=await self._lock(conn, delivery_id),
            targeted=to_deliver + dropped,
            to_deliver=to_deliver,
            dropped_by_reason=summary,
            dropped=first,
        )

    async def prepare(self, delivery_id: int) -> Analysis:
        async with self._tx() as conn:
            delivery = await self._lock(conn, delivery_id)
            _check(lifecycle.check_prepare, lifecycle.State(delivery["state"]))
            return await self._analyse(conn, delivery)

    async def approve(self, delivery_id: int, step: lifecycle.ApprovalStep) -> Row:
        async with self._tx() as conn:
            delivery = await self._lock(conn, delivery_id)
            try:
                state, steps = lifecycle.approve(
                    lifecycle.State(delivery["state"]),
                    [lifecycle.ApprovalStep(s) for s in delivery["required_approvals"]],
                    [lifecycle.ApprovalStep(s) for s in delivery["approvals"]],
                    step,
                )
            except lifecycle.TransitionError as exc:
                raise Conflict(str(exc)) from exc
            await conn.execute(
                _q("set_approvals"),
                {"id": delivery_id, "state": str(state), "approvals": [str(s) for s in steps]},
            )
            return await self._lock(conn, delivery_id)

    async def confirm(self, delivery_id: int, operator: str) -> tuple[Row, bool]:
        """Starts the send; returns the delivery and whether this call started it."""
        async with self._tx() as conn:
            delivery = await self._lock(conn, delivery_id)
            started = _check(lifecycle.check_confirm, lifecycle.State(delivery["state"]))
            if started:
                await conn.execute(_q("set_confirmed"), {"id": delivery_id, "operator": operator})
            return await self._lock(conn, delivery_id), started

    async def stop(self, delivery_id: int) -> Row:
        async with self._tx() as conn:
            delivery = await self._lock(conn, delivery_id)
            _check(lifecycle.check_stop, lifecycle.State(delivery["state"]))
            if delivery["state"] != lifecycle.State.STOPPED:
                await conn.execute(_q("set_stopped"), {"id": delivery_id})
            return await self._lock(conn, delivery_id)

    # --- KPIs ------------------------------------------------------------------------

    async def delivery_and_counters(self, delivery_id: int) -> tuple[Row, Counters]:
        # One statement, no explicit transaction: a single round trip.
        async with self._connection() as conn:
            row = await self._one(conn, "delivery_with_counters", id=delivery_id)
        if row is None:
            raise NotFound(f"delivery {delivery_id} does not exist")
        counters = Counters(**{name: row.pop(name) for name in fb.COUNTER_NAMES})
        return row, counters

    async def compute_stats(self, delivery_id: int) -> tuple[Row, Counters, int]:
        """Recounts a delivery from its logs, repairs its counters and refreshes its stats.

        Returns the delivery, the recomputed counters and how many counters had drifted.
        """
        async with self._tx() as conn:
            if await self._one(conn, "get_delivery", id=delivery_id) is None:
                raise NotFound(f"delivery {delivery_id} does not exist")
            repaired, counters = await self._recount(conn, delivery_id)
            delivery = await self._one(conn, "get_delivery", id=delivery_id)
        assert delivery is not None
        return delivery, counters, repaired

    async def _recount(
        self, conn: psycopg.AsyncConnection[Row], delivery_id: int
    ) -> tuple[int, Counters]:
        await conn.execute(_q("lock_counters_exclusive"), {"delivery_id": delivery_id})
        live = await self._one(conn, "counters", delivery_id=delivery_id)
        truth = await self._one(conn, "recount", delivery_id=delivery_id)
        assert live is not None and truth is not None
        repaired = sum(1 for name in fb.COUNTER_NAMES if live[name] != truth[name])
        await conn.execute(_q("clear_counters"), {"delivery_id": delivery_id})
        await conn.execute(_q("add_counters"), {"delivery_id": delivery_id, "shard": 0, **truth})
        await conn.execute(
            _q("set_stats"),
            {"id": delivery_id, "opened": truth["opened"], "clicked": truth["clicked"]},
        )
        return repaired, Counters(**truth)

    async def refresh_stats(self, interval: dt.timedelta) -> int:
        """The scheduled refresh of Open % and Click %; returns how many deliveries it did."""
        async with self._tx() as conn:
            return len(await self._all(conn, "refresh_stats", interval=interval))

    # --- sending logs and history ----------------------------------------------------

    async def list_sending_logs(
        self, delivery_id: int, status: fb.Status | None, after: int, limit: int
    ) -> list[Row]:
        async with self._tx() as conn:
            if await self._one(conn, "get_delivery", id=delivery_id) is None:
                raise NotFound(f"delivery {delivery_id} does not exist")
            if status is None:
                return await self._all(
                    conn, "list_sending_logs", delivery_id=delivery_id, after=after, limit=limit
                )
            return await self._all(
                conn,
                "list_sending_logs_by_status",
                delivery_id=delivery_id,
                status=int(status),
                after=after,
                limit=limit,
            )

    async def history(
        self, *, profile_id: str | None, email: str | None, before: int, limit: int
    ) -> list[Row]:
        async with self._tx() as conn:
            if profile_id is not None:
                if await self._one(conn, "profile_exists", profile_id=profile_id) is None:
                    raise NotFound(f"profile {profile_id!r} does not exist")
                return await self._all(
                    conn, "history_by_profile", profile_id=profile_id, before=before, limit=limit
                )
            return await self._all(
                conn, "history_by_email", email=email, before=before, limit=limit
            )

    # --- relay -----------------------------------------------------------------------

    async def sending_deliveries(self) -> list[int]:
        async with self._tx() as conn:
            return [r["id"] for r in await self._all(conn, "sending_deliveries")]

    @asynccontextmanager
    async def relay_lease(self, delivery_id: int) -> AsyncIterator[bool]:
        """Holds the right to relay a delivery, if no other process has it.

        A session advisory lock on a connection kept for the lease: it ends by
        itself if this process or its connection dies.
        """
        async with self._connection() as conn:
            cur = await conn.execute(_q("try_relay_lock"), {"delivery_id": delivery_id})
            row = await cur.fetchone()
            locked = bool(row and row["locked"])
            try:
                yield locked
            finally:
                if locked and not conn.closed:
                    await conn.execute(_q("relay_unlock"), {"delivery_id": delivery_id})

    async def queued_messages(
        self, delivery_id: int, after: int, limit: int
    ) -> tuple[list[int], list[str]]:
        """The next queued messages after `after`, in message order: (ids, addresses)."""
        async with self._connection() as conn:
            # Plain tuples: no dict per message on the relay's hot path.
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(
                _q("queued_messages"), {"delivery_id": delivery_id, "after": after, "limit": limit}
            )
            rows = await cur.fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    async def mark_relayed(
        self, delivery_id: int, mode: fb.FeedbackMode, after: int, upto: int
    ) -> int:
        """Marks relayed the batch the MTA acknowledged: the queued messages of the
        delivery in (after, upto]. Returns how many this call marked."""
        async with self._tx() as conn:
            await conn.execute(_q("lock_counters_shared"), {"delivery_ids": [delivery_id]})
            cur = await conn.execute(
                _q("mark_relayed"),
                {
                    "delivery_id": delivery_id,
                    "after": after,
                    "upto": upto,
                    "status": fb.status_of(mode, True, fb.Outcome.NONE),
                },
            )
            marked = cur.rowcount
            if marked:
                deltas = fb.empty_deltas()
                deltas["relayed"] = marked
                await self._add_counters(conn, {delivery_id: deltas})
        return marked

    async def finish_sending(self, delivery_id: int) -> bool:
        """Moves a delivery whose messages are all relayed to SENT."""
        async with self._tx() as conn:
            cur = await conn.execute(_q("set_sent"), {"id": delivery_id})
            return cur.rowcount == 1

    # --- feedback --------------------------------------------------------------------

    async def _add_counters(
        self, conn: psycopg.AsyncConnection[Row], deltas: dict[int, dict[str, int]]
    ) -> None:
        shard = random.randrange(COUNTER_SHARDS)
        rows = [
            {"delivery_id": d, "shard": shard, **delta}
            for d, delta in sorted(deltas.items())
            if any(delta.values())
        ]
        if rows:
            async with conn.cursor() as cur:
                await cur.executemany(_q("add_counters"), rows)

    @staticmethod
    def _message_state(row: Row) -> fb.MessageState:
        return fb.MessageState(
            message_id=row["message_id"],
            delivery_id=row["delivery_id"],
            mode=fb.FeedbackMode(row["feedback_mode"]),
            relayed=row["relayed"],
            outcome=fb.Outcome(row["outcome"]),
            bounce_reason=row["failure_reason"],
            opened=row["opened"],
            clicked=row["clicked"],
        )

    async def _write_messages(
        self, conn: psycopg.AsyncConnection[Row], messages: Iterable[fb.MessageState]
    ) -> None:
        rows = [m.row() for m in messages]
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        await conn.execute(
            _q("update_messages"),
            {
                "message_ids": list(columns[0]),
                "statuses": list(columns[1]),
                "outcomes": list(columns[2]),
                "failure_types": list(columns[3]),
                "failure_reasons": list(columns[4]),
                "opened": list(columns[5]),
                "clicked": list(columns[6]),
            },
        )

    async def apply_feedback(self, batch: EventBatch) -> IngestResult:
        """Applies a batch of feedback events in one transaction, each event once.

        Events for unknown messages are dropped (counted); an event id already
        applied is skipped; a FINISHED delivery's fates no longer change, though
        opens and clicks still count. One round trip: the counters' shared lock and
        the set-based statement (queries.sql, apply_feedback), pipelined. Raises
        Rejected if the database refuses the data (nothing is then written).
        """
        try:
            return await self._apply_feedback(batch)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise Rejected(str(exc)) from exc

    async def _apply_feedback(self, batch: EventBatch) -> IngestResult:
        async with self._tx() as conn, conn.pipeline():
            await conn.execute(
                _q("lock_counters_shared"),
                {"delivery_ids": _int_array(sorted(set(batch.delivery_ids)))},
            )
            cur = await conn.execute(
                _q("apply_feedback"),
                {
                    **_FEEDBACK_RULES,
                    "event_ids": _text_array(batch.event_ids),
                    "message_ids": _int_array(batch.message_ids),
                    "delivery_ids": _int_array(batch.delivery_ids),
                    "kinds": _int_array(batch.kinds),
                    "reasons": _int_array(batch.reasons),
                    "attempts": _int_array(batch.attempts),
                    "link_indexes": _int_array(batch.link_indexes),
                    "event_micros": _int_array(batch.event_micros),
                    "shard": random.randrange(COUNTER_SHARDS),
                },
            )
            row = await cur.fetchone()
        assert row is not None
        known, applied = row["known"], row["applied"]
        return IngestResult(applied=applied, duplicates=known - applied, unknown=len(batch) - known)

    # --- end of validity -------------------------------------------------------------

    async def expiring_deliveries(self, grace: dt.timedelta) -> list[int]:
        async with self._tx() as conn:
            return [r["id"] for r in await self._all(conn, "expiring_deliveries", grace=grace)]

    async def finish(self, delivery_id: int) -> bool:
        """Ends a delivery's validity: every message gets a final status, the figures
        are recounted and final. Returns whether this call finished it."""
        async with self._tx() as conn:
            delivery = await self._lock(conn, delivery_id)
            if delivery["state"] not in (lifecycle.State.SENDING, lifecycle.State.SENT):
                return False
            # Exclusive: no feedback batch changes the counters until the recount below.
            await conn.execute(_q("lock_counters_exclusive"), {"delivery_id": delivery_id})
            after = 0
            deltas = {delivery_id: fb.empty_deltas()}
            while True:
                rows = await self._all(
                    conn, "unsettled_messages", delivery_id=delivery_id, after=after, limit=10_000
                )
                if not rows:
                    break
                after = rows[-1]["message_id"]
                changed = []
                for row in rows:
                    message = self._message_state(row)
                    final = fb.expiry_outcome(message.mode, message.relayed, message.outcome)
                    if final != message.outcome:
                        fb.move_outcome(message, final, deltas[delivery_id])
                        changed.append(message)
                await self._write_messages(conn, changed)
            await self._add_counters(conn, deltas)
            # The final figures come from the logs themselves, in the same transaction:
            # nobody sees FINISHED with figures from before the recount.
            repaired, _ = await self._recount(conn, delivery_id)
            if repaired:
                log.warning("delivery %d: %d counters had drifted, repaired", delivery_id, repaired)
            await conn.execute(_q("set_finished"), {"id": delivery_id})
        return True

    # --- recurring deliveries --------------------------------------------------------

    async def create_recurring(
        self,
        new: NewDelivery,
        interval: dt.timedelta,
        first_time: dt.datetime | None,
        confirm_before_send: bool,
    ) -> Row:
        if new.request_id:
            async with self._tx() as conn:
                row = await self._one(conn, "recurring_id_by_request", request_id=new.request_id)
            if row is not None:
                return await self.get_recurring(row["id"])
        async with self._tx() as conn:
            target_id = await self._insert_target(conn, new.segment, new.recipients)
            row = await self._one(
                conn,
                "insert_recurring",
                label=new.label,
                subject=new.subject,
                body=new.body,
                links=new.links,
                target_id=target_id,
                feedback_mode=str(new.feedback_mode),
                validity_period=new.validity_period,
                required_approvals=[str(s) for s in new.required_approvals],
                occurrence_interval=interval,
                confirm_before_send=confirm_before_send,
                next_occurrence_time=first_time,
                request_id=new.request_id or None,
            )
            if row is None:
                raise _RequestRace()
            recurring_id: int = row["id"]
        return await self.get_recurring(recurring_id)

    async def get_recurring(self, recurring_id: int) -> Row:
        async with self._tx() as conn:
            row = await self._one(conn, "get_recurring", id=recurring_id)
        if row is None:
            raise NotFound(f"recurring delivery {recurring_id} does not exist")
        return row

    async def start_due_occurrences(self) -> list[tuple[int, bool]]:
        """Creates and prepares the occurrences that are due; sends those that need no
        confirmation. Returns (delivery id, started) for each occurrence created."""
        created: list[tuple[int, bool]] = []
        async with self._tx() as conn:
            for recurring in await self._all(conn, "due_recurring"):
                row = await self._one(conn, "insert_occurrence", id=recurring["id"])
                assert row is not None
                delivery = await self._lock(conn, row["id"])
                analysis = await self._analyse(conn, delivery)
                started = (
                    not recurring["confirm_before_send"]
                    and analysis.delivery["state"] == lifecycle.State.APPROVED
                )
                if started:
                    await conn.execute(
                        _q("set_confirmed"), {"id": row["id"], "operator": "scheduler"}
                    )
                await conn.execute(_q("advance_recurring"), {"id": recurring["id"]})
                created.append((row["id"], started))
        return created


class _RequestRace(Conflict):
    """Two requests with one request_id raced; the loser answers with the winner's."""


def _check(rule: Any, state: lifecycle.State) -> Any:
    try:
        return rule(state)
    except lifecycle.TransitionError as exc:
        raise Conflict(str(exc)) from exc


# Arrays go to the server as array literals: joining strings is many times cheaper
# than psycopg's dumping of a Python list, element by element.
def _int_array(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _bool_array(values: Iterable[bool]) -> str:
    return "{" + ",".join("true" if v else "false" for v in values) + "}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text_array(values: Iterable[str]) -> str:
    return "{" + ",".join(map(_quote, values)) + "}"


def _table(rows: Iterable[Iterable[int | None]]) -> str:
    """A two-dimensional array literal; None is NULL."""
    return (
        "{"
        + ",".join(
            "{" + ",".join("NULL" if v is None else str(v) for v in row) + "}" for row in rows
        )
        + "}"
    )


def _feedback_rules() -> dict[str, str]:
    """The domain's rules as the lookup tables apply_feedback reads, indexed by event
    kind, or by mode (WITHOUT_EFS, EFS) then outcome: the SQL holds no copy of them."""
    modes = (fb.FeedbackMode.WITHOUT_EFS, fb.FeedbackMode.EFS)
    kinds = sorted(fb.EventKind)
    assert [int(k) for k in kinds] == list(range(1, len(kinds) + 1))
    # A sentinel bounce reason tells "the bounce reason" apart from fixed reasons.
    bounce = -1
    reasons = [
        [None if (r := fb.failure_reason_of(m, o, bounce)) == bounce else r for o in fb.Outcome]
        for m in modes
    ]
    return {
        "outcome_of_kind": _int_array(int(fb.outcome_of(k) or fb.Outcome.NONE) for k in kinds),
        "opens": _bool_array(k in fb.ENGAGEMENTS for k in kinds),
        "clicks": _bool_array(k is fb.EventKind.CLICKED for k in kinds),
        "statuses": _table([int(fb.status_of(m, True, o)) for o in fb.Outcome] for m in modes),
        "failure_types": _table([int(fb.failure_type_of(m, o)) for o in fb.Outcome] for m in modes),
        "failure_reasons": _table(reasons),
    }


_FEEDBACK_RULES = _feedback_rules()
