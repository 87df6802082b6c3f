"""The address table's storage: events folded into address entries (domain.quarantine),
in the transaction of the feedback or the change by hand that brings them.

Each address's entry is locked, then folded on from where it stands when its new
events all come after its latest one, the common case; an event that arrives after a
later one folds the history again from the last entry recorded before it, so that the
table is the same whatever order the events arrived in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from delivery_service.domain import feedback as fb
from delivery_service.domain import quarantine as q
from delivery_service.store.connection import (
    QUERIES,
    Conn,
    execute,
    fetch_tuples,
    fetch_value,
    int_array,
    optional_int_array,
    text_array,
)

Key = tuple[int, int, str]
RELEASES_PER_CALL = 10_000


def state_of(after: dict[str, Any]) -> q.AddressState:
    return q.AddressState(**{**after, "status": q.AddressStatus(after["status"])})


def _json(state: q.AddressState | None) -> str:
    # vars(), not dataclasses.asdict: a flat entry needs no deep copy (asdict was 8 % of
    # the ingest's samples).
    return "" if state is None else json.dumps(vars(state), separators=(",", ":"))


def _event(address_row: Sequence[Any]) -> tuple[q.AddressEvent, q.AddressState | None]:
    (_, time, delivery_id, event_id, signal, message_id, failure_type, failure_reason,
     smtp_code, smtp_status, smtp_text, changed_by, after) = address_row  # fmt: skip
    event = q.AddressEvent(
        time, delivery_id, event_id, q.Signal(signal), message_id, failure_type,
        failure_reason, smtp_code, smtp_status, smtp_text, changed_by,
    )  # fmt: skip
    return event, None if after is None else state_of(json.loads(after))


@dataclasses.dataclass
class _Writes:
    """What a fold writes: new events, events whose entry-after changed, entries."""

    new: list[tuple[str, q.AddressEvent, q.AddressState | None]] = dataclasses.field(
        default_factory=list
    )
    refolded: list[tuple[str, q.AddressEvent, q.AddressState | None]] = dataclasses.field(
        default_factory=list
    )
    entries: list[tuple[str, q.AddressState]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class DeliveryReports:
    """A delivery's new delivery reports as apply_feedback returns them: array literals,
    passed on to record_delivery_reports untouched (no work per report in Python)."""

    delivery_id: int
    addresses: str
    event_micros: str
    event_ids: str
    message_ids: str
    reasons: str
    smtp_codes: str
    smtp_statuses: str
    smtp_texts: str


async def fold(
    conn: Conn,
    events: Iterable[tuple[str, q.AddressEvent]],
    rules: q.Rules,
    now: int,
    reports: Sequence[DeliveryReports] = (),
) -> dict[str, q.AddressState]:
    """Folds (address, event) pairs, and delivery reports, into the address table, in the
    caller's transaction; each event must be new (its feedback event applied for the
    first time). A report that changes nothing is only recorded, by the database; the
    rest are folded here. Returns the entries folded here as they now stand. `now`:
    microseconds since the epoch (timed releases)."""
    by_address: dict[str, list[q.AddressEvent]] = defaultdict(list)
    for address, event in events:
        by_address[address].append(event)
    if not by_address and not reports:
        return {}
    folded = text_array(sorted(by_address))
    await execute(
        conn, "lock_addresses", addresses=folded, address_lists=[r.addresses for r in reports]
    )
    for report, rows in zip(reports, await _record_reports(conn, reports, folded), strict=True):
        for address, micros, event_id, message_id, reason, code, status, text in rows:
            by_address[address].append(
                q.AddressEvent(micros, report.delivery_id, event_id, q.Signal.DELIVERED,
                               message_id, 0, reason, code, status, text)
            )  # fmt: skip
    if not by_address:
        return {}
    addresses = sorted(by_address)
    current = await _states(conn, addresses)
    late = [
        a for a in addresses
        if (latest := current[a][1]) is not None and min(e.key for e in by_address[a]) < latest
    ]  # fmt: skip
    history: dict[str, list[tuple[q.AddressEvent, q.AddressState | None]]] = defaultdict(list)
    if late:
        for row in await fetch_tuples(conn, "address_history", addresses=text_array(late)):
            history[row[0]].append(_event(row))
    writes = _Writes()
    for address in addresses:
        state, _ = current[address]
        new = by_address[address]
        if address in history:
            state = _fold_again(address, history[address], new, rules, writes)
        else:
            folded_events = q.fold(state, new, rules)
            writes.new.extend((address, e, after) for e, after in folded_events)
            state = next((a for _, a in reversed(folded_events) if a is not None), state)
        state = q.released_by_time(state, now, rules)
        if state != current[address][0]:
            writes.entries.append((address, state))
    await _write(conn, writes)
    return {a: current[a][0] for a in addresses} | dict(writes.entries)


async def _record_reports(
    conn: Conn, reports: Sequence[DeliveryReports], folded: str
) -> list[list[tuple[Any, ...]]]:
    """Records the reports that change nothing (record_delivery_reports), pipelined;
    returns, for each delivery's, those left to fold."""
    cursors = [
        await conn.execute(
            QUERIES["record_delivery_reports"],
            {
                **{f.name: getattr(r, f.name) for f in dataclasses.fields(r)},
                "folded": folded,
                "changed_by": q.BY_FEEDBACK,
            },
        )
        for r in reports
    ]
    return [await cur.fetchall() for cur in cursors]


async def _states(conn: Conn, addresses: list[str]) -> dict[str, tuple[q.AddressState, Key | None]]:
    """The entries of addresses (locked), each with the key of its latest event (None
    without events)."""
    current = {}
    for row in await fetch_tuples(conn, "address_states", addresses=text_array(addresses)):
        address, state = _entry(row)
        current[address] = (state, None if row[14] is None else (row[14], row[15], row[16]))
    return current


async def history_horizon(conn: Conn, now: dt.datetime) -> dt.datetime:
    """The time no feedback can come from before any more: the address histories'
    events older than it are past their retention."""
    horizon: dt.datetime = await fetch_value(
        conn,
        "address_history_horizon",
        now=now,
        margin=dt.timedelta(seconds=fb.EVENT_TIME_MARGIN_SECONDS),
    )
    return horizon


async def history_work(
    conn: Conn, horizon: dt.datetime, after: str, limit: int
) -> tuple[list[str], str | None]:
    """Of the next `limit` entries after `after`, those whose history or entry the
    retention changes, and the last address examined (None: the table's end)."""
    rows = await fetch_tuples(
        conn, "address_history_work", horizon=horizon, after=after, limit=limit
    )
    due = [address for address, is_due in rows if is_due]
    return due, rows[-1][0] if len(rows) == limit else None


async def prune_history(conn: Conn, horizon: dt.datetime, addresses: list[str]) -> tuple[int, int]:
    """The retention of these addresses' histories, their entries locked first: the
    events before `horizon` but the last that changed each entry go, and an entry the
    same as none goes with its history when no later event needs it. Returns how many
    events and entries went."""
    locked = text_array(sorted(addresses))
    await execute(conn, "lock_addresses", addresses=locked, address_lists=[])
    rows = await fetch_tuples(conn, "prune_address_history", horizon=horizon, addresses=locked)
    events, entries = rows[0]
    return int(events), int(entries)


async def release_due(conn: Conn, rules: q.Rules, now: int) -> int:
    """The cleanup round: ERRONEOUS entries whose timed release is due by `now` go back
    to VALID (at most RELEASES_PER_CALL); returns how many."""
    shortest = min(rules.release_after, rules.mailbox_full_release_after)
    candidates = [
        address
        for (address,) in await fetch_tuples(
            conn, "erroneous_addresses", before=now - shortest, limit=RELEASES_PER_CALL
        )
    ]
    if not candidates:
        return 0
    writes = _Writes()
    candidates.sort()
    await execute(conn, "lock_addresses", addresses=text_array(candidates), address_lists=[])
    for address, (state, _) in (await _states(conn, candidates)).items():
        released = q.released_by_time(state, now, rules)
        if released != state:
            writes.entries.append((address, released))
    await _write(conn, writes)
    return len(writes.entries)


def _fold_again(
    address: str,
    history: list[tuple[q.AddressEvent, q.AddressState | None]],
    new: list[q.AddressEvent],
    rules: q.Rules,
    writes: _Writes,
) -> q.AddressState:
    """Folds an address's history again from the last entry recorded before its earliest
    new event; records what changed. Returns the entry after the last event."""
    start = min(e.key for e in new)
    state, restart = q.INITIAL, None
    for i, (event, after) in enumerate(history):
        if event.key >= start:
            break
        if after is not None:
            state, restart = after, i
    old = history[(restart + 1 if restart is not None else 0) :]
    stored = {e.key: after for e, after in old}
    fresh = {e.key for e in new}
    for event, after in q.fold(state, [e for e, _ in old] + new, rules):
        if event.key in fresh:
            writes.new.append((address, event, after))
        elif stored[event.key] != after:
            writes.refolded.append((address, event, after))
        state = after if after is not None else state
    return state


async def _write(conn: Conn, writes: _Writes) -> None:
    if writes.new:
        rows = writes.new
        await execute(
            conn,
            "record_address_events",
            addresses=text_array(a for a, _, _ in rows),
            event_micros=int_array(e.time for _, e, _ in rows),
            delivery_ids=int_array(e.delivery_id for _, e, _ in rows),
            event_ids=text_array(e.event_id for _, e, _ in rows),
            signals=int_array(e.signal for _, e, _ in rows),
            message_ids=int_array(e.message_id for _, e, _ in rows),
            failure_types=int_array(e.failure_type for _, e, _ in rows),
            failure_reasons=int_array(e.failure_reason for _, e, _ in rows),
            smtp_codes=int_array(e.smtp_code for _, e, _ in rows),
            smtp_statuses=text_array(e.smtp_status for _, e, _ in rows),
            smtp_texts=text_array(e.smtp_text for _, e, _ in rows),
            changed_by=text_array(e.changed_by for _, e, _ in rows),
            afters=text_array(_json(after) for _, _, after in rows),
        )
    if writes.refolded:
        rows = writes.refolded
        await execute(
            conn,
            "refold_address_events",
            addresses=text_array(a for a, _, _ in rows),
            event_micros=int_array(e.time for _, e, _ in rows),
            delivery_ids=int_array(e.delivery_id for _, e, _ in rows),
            event_ids=text_array(e.event_id for _, e, _ in rows),
            afters=text_array(_json(after) for _, _, after in rows),
        )
    if writes.entries:
        entries = [s for _, s in writes.entries]
        await execute(
            conn,
            "write_addresses",
            addresses=text_array(a for a, _ in writes.entries),
            statuses=int_array(s.status for s in entries),
            error_counts=int_array(s.error_count for s in entries),
            first_error_times=optional_int_array(s.first_error_time for s in entries),
            last_error_times=optional_int_array(s.last_error_time for s in entries),
            failure_types=int_array(s.failure_type for s in entries),
            failure_reasons=int_array(s.failure_reason for s in entries),
            smtp_codes=int_array(s.smtp_code for s in entries),
            smtp_statuses=text_array(s.smtp_status for s in entries),
            smtp_texts=text_array(s.smtp_text for s in entries),
            delivery_ids=int_array(s.delivery_id for s in entries),
            message_ids=int_array(s.message_id for s in entries),
            update_times=optional_int_array(s.update_time for s in entries),
            changed_by=text_array(s.changed_by for s in entries),
        )


def _filter_params(where: q.AddressFilter) -> dict[str, object]:
    """The filter as list_addresses takes it: the text is matched lower-cased."""
    return {
        "statuses": int_array(where.statuses),
        "failure_reason": where.failure_reason,
        "domain": where.domain.lower(),
        "error_text": where.error_text.lower(),
        "changed_after": where.changed_after,
        "changed_before": where.changed_before,
    }


def _entry(row: Sequence[Any]) -> tuple[str, q.AddressState]:
    return row[0], q.AddressState(q.AddressStatus(row[1]), *row[2:14])


async def get(conn: Conn, address: str) -> q.AddressState:
    """An address's entry (lower case); an address never seen is VALID."""
    rows = await fetch_tuples(conn, "get_address", address=address)
    return _entry(rows[0])[1] if rows else q.INITIAL


async def page(
    conn: Conn, where: q.AddressFilter, after: tuple[int, str] | None, limit: int
) -> list[tuple[str, q.AddressState]]:
    """A page of the entries that ever changed and match, most recently changed first,
    after the (update time, address) of the previous page's last."""
    rows = await fetch_tuples(
        conn,
        "list_addresses",
        **_filter_params(where),
        after_time=after[0] if after else None,
        after_address=after[1] if after else "",
        limit=limit,
    )
    return [_entry(row) for row in rows]
