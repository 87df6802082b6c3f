"""The address table's use cases: the cleanup round's timed releases, and the changes
operators make by hand (one address, or a bulk release by filter)."""

from __future__ import annotations

import dataclasses

from delivery_service import clock
from delivery_service.domain import quarantine as q
from delivery_service.domain.quarantine import AddressFilter
from delivery_service.store import addresses
from delivery_service.store.connection import Database

# Timed releases done in one transaction; a round with more due goes on at the next.
RELEASES_PER_ROUND = addresses.RELEASES_PER_CALL
# The address histories' retention walks the entries in address order: so many in one
# transaction (their entries locked while it deletes), so many in one scheduler round.
HISTORY_ENTRIES_PER_CHUNK = 5_000
HISTORY_ENTRIES_PER_ROUND = 100_000


@dataclasses.dataclass
class HistoryPruned:
    """What a round of the address histories' retention did, and where the walk goes
    on (None: it reached the end of the table)."""

    events: int = 0
    entries: int = 0
    after: str | None = None


def now_micros() -> int:
    return int(clock.now().timestamp() * 1_000_000)


async def release_due(db: Database, rules: q.Rules) -> int:
    """The cleanup round: ERRONEOUS addresses whose timed release is due become VALID.
    Returns how many (at most RELEASES_PER_ROUND)."""
    async with db.transaction() as conn:
        return await addresses.release_due(conn, rules, now_micros())


async def prune_history(db: Database, after: str = "") -> HistoryPruned:
    """A round of the address histories' retention (with the event feed's), from the
    entry after `after` on, at most HISTORY_ENTRIES_PER_ROUND: each history keeps only
    its events no feedback can come before and the last that changed the entry; an
    entry the same as none (VALID, SPEC.md) goes once no kept event needs it."""
    async with db.connection() as conn:
        horizon = await addresses.history_horizon(conn, clock.now())
    done = HistoryPruned()
    for _ in range(HISTORY_ENTRIES_PER_ROUND // HISTORY_ENTRIES_PER_CHUNK):
        async with db.transaction() as conn:
            due, done.after = await addresses.history_work(
                conn, horizon, after, HISTORY_ENTRIES_PER_CHUNK
            )
            if due:
                events, entries = await addresses.prune_history(conn, horizon, due)
                done.events += events
                done.entries += entries
        if done.after is None:
            break
        after = done.after
    return done


async def set_status(
    db: Database, address: str, status: q.AddressStatus, operator: str, rules: q.Rules
) -> q.AddressState:
    """Releases, quarantines or denylists one address by hand; returns its entry."""
    address = address.lower()
    async with db.transaction() as conn:
        entries = await addresses.fold(
            conn, [(address, q.manual_event(status, operator, now_micros()))], rules, now_micros()
        )
    return entries[address]


async def get(db: Database, address: str) -> q.AddressState:
    async with db.connection() as conn:
        return await addresses.get(conn, address.lower())


async def page(
    db: Database, where: AddressFilter, after: tuple[int, str] | None, limit: int
) -> list[tuple[str, q.AddressState]]:
    async with db.connection() as conn:
        return await addresses.page(conn, where, after, limit)


# Statuses a bulk release takes (all three when a filter names none).
RELEASABLE = (q.AddressStatus.ERRONEOUS, q.AddressStatus.QUARANTINED, q.AddressStatus.DENYLISTED)
# Entries read, and released, at a time.
BULK_CHUNK = 10_000


async def release_matching(
    db: Database, where: AddressFilter, *, dry_run: bool, operator: str, rules: q.Rules
) -> int:
    """Releases every ERRONEOUS, QUARANTINED or DENYLISTED entry that matches, in one
    transaction (all or none), each as a change by hand in its history; with `dry_run`
    only counts them. Returns how many."""
    if not where.statuses:
        where = dataclasses.replace(where, statuses=tuple(RELEASABLE))
    async with db.transaction() as conn:
        matching: list[str] = []
        after = None
        while chunk := await addresses.page(conn, where, after, BULK_CHUNK):
            matching += [a for a, _ in chunk]
            last, state = chunk[-1]
            assert state.update_time is not None  # listed entries have changed
            after = (state.update_time, last)
        if dry_run:
            return len(matching)
        now = now_micros()
        for start in range(0, len(matching), BULK_CHUNK):
            await addresses.fold(
                conn,
                [
                    (a, q.manual_event(q.AddressStatus.VALID, operator, now))
                    for a in matching[start : start + BULK_CHUNK]
                ],
                rules,
                now,
            )
        return len(matching)
