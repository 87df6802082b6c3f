"""The connection layer: the pool, the named queries, and driver errors turned into the
store's own. The only module of the service that imports psycopg, with the two that run
at deployment time on a connection of their own: migrations.py and distribution.py.

Queries live in sql/queries/*.sql, one file per flow. They name the domain's values
instead of repeating them: `{State.SENDING}` or `{Status.QUEUED}` is replaced, once at
load time, by the SQL literal of that enum member ('SENDING', 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
import socket
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row, tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from delivery_service.domain import events, feedback, lifecycle, preparation, quarantine, recurring
from grpc_common import named_queries

log = logging.getLogger(__name__)

T = TypeVar("T")

Conn = psycopg.AsyncConnection[Any]


class StoreError(Exception):
    """Base of the storage errors the service maps to gRPC statuses."""


class NotFound(StoreError):
    pass


class OutOfRange(StoreError):
    """What was asked for is past what is kept (the event feed's retention)."""


class Conflict(StoreError):
    """The change is not allowed in the current state, or the thing exists already."""


class AlreadyExists(Conflict):
    """A unique constraint refused the row; `constraint` names it."""

    def __init__(self, constraint: str, message: str = "") -> None:
        super().__init__(message or f"already exists ({constraint})")
        self.constraint = constraint


class Unavailable(StoreError):
    """The database cannot be reached right now: worth trying again."""


class Cancelled(Unavailable):
    """The database cancelled a statement (its statement_timeout or lock_timeout): worth
    trying again, with less work in one transaction if it was a large one."""


class DiskFull(Unavailable):
    """The database had no room for a write (SQLSTATE 53100, disk_full: a table or index
    file could not be extended): the transaction is rolled back whole; worth trying again
    once space is freed."""


class Rejected(StoreError):
    """The database refused the data itself: trying it again would fail again."""


# The enums SQL may name, by class name: their members are rendered as literals.
NAMED_VALUES: dict[str, type[enum.Enum]] = {
    e.__name__: e
    for e in (
        lifecycle.State,
        lifecycle.ApprovalStep,
        feedback.FeedbackMode,
        feedback.Status,
        feedback.Outcome,
        feedback.FailureType,
        feedback.FailureReason,
        feedback.EventKind,
        preparation.DropReason,
        recurring.RecurringState,
        quarantine.AddressStatus,
        quarantine.Signal,
        events.FeedSource,
    )
}
_NAMED = re.compile(r"\{(" + "|".join(NAMED_VALUES) + r")\.([A-Z_]+)\}")


def _literal(match: re.Match[str]) -> str:
    value = NAMED_VALUES[match.group(1)][match.group(2)].value
    return str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"


def render(sql: str) -> str:
    """SQL with its named domain values replaced by their literals."""
    return _NAMED.sub(_literal, sql)


def _load_queries() -> dict[str, bytes]:
    folder = resources.files("delivery_service") / "sql" / "queries"
    queries: dict[str, bytes] = {}
    for file in sorted(folder.iterdir(), key=lambda f: f.name):
        if not file.name.endswith(".sql"):
            continue
        for name, text in named_queries.parse(file.read_text("utf-8")).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice ({file.name})")
            # Bytes: psycopg takes them as they are (no literal-string typing).
            queries[name] = render(text).encode()
    return queries


QUERIES = _load_queries()


# How long a caller waits for a pooled connection before it is told Unavailable: well
# under a client's deadline (the CLI's is 30 s), so an unreachable database is a quick
# UNAVAILABLE, not a DEADLINE_EXCEEDED after the deadline (psycopg_pool waits 30 s).
POOL_TIMEOUT = 4.0
# libpq's connect_timeout (whole seconds) for each new connection: a host that drops
# packets must not hold a connection attempt for minutes.
CONNECT_TIMEOUT = 2
# The pool gives a failing reconnection up after this long and starts a fresh one on the
# next demand: its backoff doubles from 1 s up to this bound (5 minutes by default, which
# left the first call after an outage waiting 23 s for the next attempt).
RECONNECT_TIMEOUT = 2.0
# How often the probe asks the database while it answers, and while it does not: a
# return is seen within PROBE_DOWN_INTERVAL, an outage within PROBE_INTERVAL.
PROBE_INTERVAL = 1.0
PROBE_DOWN_INTERVAL = 0.25
# How long a caller waits beyond the pool's timeout for the pool's check of a connection
# (a query that takes a millisecond when the database answers).
CHECK_TIMEOUT = 0.5
# How long a caller waits for a connection once the probe found the database gone: a
# connection that is ready is still handed out, but nobody waits long for a new one.
DOWN_POOL_TIMEOUT = 0.5
# A short read (Database.read_one) takes a connection given back whole this recently,
# while the probe finds the database answering, without the pool's check: the check is
# a round trip, as long as the read itself (GetKpis' statement).
CHECKED_BY_USE_SECONDS = 1.0
# How long a short read waits for its answer: it is bounded itself instead of its check.
SHORT_READ_TIMEOUT = POOL_TIMEOUT
# Set while a short read takes its connection: the pool's check may be skipped.
_short_read: ContextVar[bool] = ContextVar("short_read", default=False)


class Database:
    """The pool of connections, opened at start-up; connections are in autocommit."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 2,
        max_size: int = 20,
        timeout: float = POOL_TIMEOUT,
    ) -> None:
        self.conninfo = conninfo
        # What the probe (watch) last found.
        self.reachable = True
        # Work whose waiting caller gave up (see _bounded), kept until it ends.
        self._late: set[asyncio.Future[Any]] = set()
        # A test hook: awaited inside each transaction just before its commit, to hold
        # transactions open (the event feed's commit-order tests).
        self.before_commit: Callable[[], Awaitable[None]] | None = None
        # When each connection was last given back whole (monotonic seconds).
        self._used: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()
        self.pool = AsyncConnectionPool(
            conninfo,
            connection_class=psycopg.AsyncConnection[Any],
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            # A connection broken by a database restart is replaced, not handed out.
            check=self._check,
            name="delivery",
            timeout=timeout,
            reconnect_timeout=RECONNECT_TIMEOUT,
        )

    async def _check(self, conn: Conn) -> None:
        """The pool's check of a connection before it is handed out; a short read skips
        it on a connection used whole within CHECKED_BY_USE_SECONDS while the database
        answers the probe."""
        if _short_read.get() and self.reachable and not conn.broken:
            since = time.monotonic() - self._used.get(conn, -CHECKED_BY_USE_SECONDS)
            if since < CHECKED_BY_USE_SECONDS:
                return
        await AsyncConnectionPool.check_connection(conn)

    async def read_one(self, name: str, /, record: type[T], **params: Any) -> T | None:
        """One short read-only statement (GetKpis', the watches'), maybe on a connection
        the pool did not check (see _check): bounded by SHORT_READ_TIMEOUT instead, so
        that a database that stopped answering since is UNAVAILABLE in time; one that
        broke the connection (a restart) is asked again on a checked one."""
        token = _short_read.set(True)
        try:
            async with self.connection() as conn:
                # A timer, not a task per read: it hangs the connection up if it fires.
                timer = asyncio.get_running_loop().call_later(SHORT_READ_TIMEOUT, _hang_up, conn)
                try:
                    return await fetch_one(conn, name, record, **params)
                except psycopg.OperationalError:
                    if timer.when() <= asyncio.get_running_loop().time():
                        raise Unavailable(
                            f"the database is unreachable: no answer in {SHORT_READ_TIMEOUT:g} s"
                        ) from None
                    if not conn.broken:
                        raise
                finally:
                    timer.cancel()
        finally:
            _short_read.reset(token)
        async with self.connection() as conn:
            return await fetch_one(conn, name, record, **params)

    async def open(self, timeout: float = 30.0) -> None:
        try:
            await self.pool.open(wait=True, timeout=timeout)
        except psycopg.OperationalError as exc:
            raise Unavailable(str(exc)) from exc
        except TimeoutError as exc:
            raise Unavailable("the database could not be reached in time") from exc

    async def watch(self, on_change: Callable[[bool], Awaitable[None]]) -> None:
        """Probes the database until cancelled, on a connection of its own (a pool busy
        under load must not look like an outage), and tells `on_change` when it stops or
        starts answering. On its return, the pool's connections broken by the outage are
        replaced at once, before the first caller meets them."""
        probe: Conn | None = None
        down_since = 0.0
        try:
            while True:
                probe, error = await self._probe(probe)
                if self.reachable and error:
                    self.reachable, down_since = False, time.monotonic()
                    log.warning("database unreachable: %s", error)
                    await on_change(False)
                elif not self.reachable and not error:
                    await self.pool.check()
                    self.reachable = True
                    log.info("database reachable again after %.1f s", time.monotonic() - down_since)
                    await on_change(True)
                await asyncio.sleep(PROBE_INTERVAL if self.reachable else PROBE_DOWN_INTERVAL)
        finally:
            if probe is not None:
                await probe.close()

    async def _probe(self, probe: Conn | None) -> tuple[Conn | None, str]:
        """One `SELECT 1` on the probe's connection, else on a new one (the last may have
        been broken by a restart): the connection, and the error ("" if one answered)."""
        error = ""
        for conn in (probe, None) if probe is not None else (None,):
            try:
                if conn is None:  # libpq's connect_timeout bounds it
                    conn = await psycopg.AsyncConnection.connect(
                        self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
                    )
                await self._bounded(conn.execute("SELECT 1"), CONNECT_TIMEOUT, _closing(conn))
                return conn, ""
            except TimeoutError:
                # A server that accepts connections but does not answer is unreachable
                # too (a new connection would not be answered either); the connection is
                # closed once its query ends.
                return None, "no answer in time"
            except psycopg.Error as exc:
                error = str(exc).strip()
                if conn is not None:
                    await conn.close()
        return None, error

    async def close(self) -> None:
        await self.pool.close()
        # Work its callers gave up ends with the pool (PoolClosed): before the event loop
        # does, or it would report it as unhandled.
        if self._late:
            await asyncio.wait(self._late, timeout=CHECK_TIMEOUT)

    def stats(self) -> Mapping[str, int]:
        """The pool's figures (pool_size, pool_available, requests_waiting, ...)."""
        return self.pool.get_stats()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A pooled connection; an unreachable database is Unavailable, during use too."""
        try:
            conn = await self._getconn(self.pool.timeout if self.reachable else DOWN_POOL_TIMEOUT)
            try:
                async with conn:  # the pool's own way: rolled back on an error, not closed
                    yield conn
                self._used[conn] = time.monotonic()
            finally:
                await self.pool.putconn(conn)
        except psycopg.errors.UniqueViolation as exc:
            raise AlreadyExists(exc.diag.constraint_name or "unique") from exc
        except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:
            raise Cancelled(str(exc)) from exc
        except psycopg.errors.DiskFull as exc:  # an OperationalError: before it
            raise DiskFull(str(exc)) from exc
        except PoolTimeout as exc:  # its own words are about the pool, not the database
            why = "busy" if self.reachable else "unreachable"
            raise Unavailable(f"no database connection in time: the database is {why}") from exc
        except psycopg.OperationalError as exc:
            raise Unavailable(str(exc)) from exc
        except TimeoutError as exc:  # the pool had no connection in time
            raise Unavailable("no database connection available") from exc

    async def _getconn(self, timeout: float) -> Conn:
        """A connection from the pool within `timeout` (and a little more, for its check).
        The pool checks a connection before handing it out, and that check has no bound:
        against a server that does not answer at all (hung, or behind a partition) a
        caller would wait past its deadline."""
        try:
            return await self._bounded(
                self.pool.getconn(timeout), timeout + CHECK_TIMEOUT, self.pool.putconn
            )
        except TimeoutError:
            raise PoolTimeout("the pool's check of a connection got no answer") from None

    async def _bounded(
        self, work: Awaitable[T], timeout: float, leftover: Callable[[T], Awaitable[None]]
    ) -> T:
        """What `work` gives within `timeout`, else TimeoutError. The work is not cancelled
        (psycopg meets the cancellation of a query the server does not answer by asking
        the server to cancel it, for up to 10 s more): it goes on alone, and whatever it
        gets at last is handed to `leftover` (a connection given back, one closed)."""
        attempt = asyncio.ensure_future(work)
        try:
            return await asyncio.wait_for(asyncio.shield(attempt), timeout)
        except BaseException:  # this wait's end, or the caller cancelled

            def done(attempt: asyncio.Future[T]) -> None:
                self._late.discard(attempt)
                if not attempt.cancelled() and attempt.exception() is None:
                    ending = asyncio.ensure_future(leftover(attempt.result()))
                    self._late.add(ending)
                    ending.add_done_callback(self._late.discard)

            self._late.add(attempt)
            attempt.add_done_callback(done)  # at once if it is over
            raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """A connection inside one transaction, committed when the block ends."""
        async with self.connection() as conn, conn.transaction():
            yield conn
            if self.before_commit is not None:
                await self.before_commit()


def _hang_up(conn: Conn) -> None:
    """Ends a connection's statement that gets no answer: its socket is shut down, so
    that the statement fails at once and the connection is discarded when it is given
    back. Not closed: the statement still waits on the descriptor, which a new
    connection could take over."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.pgconn.socket)) as s:
        s.shutdown(socket.SHUT_RDWR)


def _closing(conn: Conn) -> Callable[[object], Awaitable[None]]:
    async def close(_: object) -> None:
        await conn.close()

    return close


async def execute(conn: Conn, name: str, /, **params: Any) -> int:
    """Runs a named statement; returns how many rows it changed. A unique key it would
    break is AlreadyExists at once, for the caller to name what exists."""
    try:
        cur = await conn.execute(QUERIES[name], params)
    except psycopg.errors.UniqueViolation as exc:
        raise AlreadyExists(exc.diag.constraint_name or "unique") from exc
    return cur.rowcount


async def fetch_one(conn: Conn, name: str, /, record: type[T], **params: Any) -> T | None:
    """The first row of a named query as a record (a class taking the columns by name)."""
    async with conn.cursor(row_factory=class_row(record)) as cur:
        await cur.execute(QUERIES[name], params)
        return await cur.fetchone()


async def fetch_all(conn: Conn, name: str, /, record: type[T], **params: Any) -> list[T]:
    """Every row of a named query as records."""
    async with conn.cursor(row_factory=class_row(record)) as cur:
        await cur.execute(QUERIES[name], params)
        return await cur.fetchall()


async def fetch_tuples(conn: Conn, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
    """Every row as a plain tuple: no object per row on a hot path."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(QUERIES[name], params)
        return await cur.fetchall()


async def fetch_value(conn: Conn, name: str, /, **params: Any) -> Any:
    """The first column of the first row, or None without rows."""
    rows = await fetch_tuples(conn, name, **params)
    return rows[0][0] if rows else None


async def execute_many(conn: Conn, name: str, /, rows: Iterable[Mapping[str, Any]]) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(QUERIES[name], rows)


async def copy_rows(conn: Conn, name: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """COPY FROM STDIN, a row at a time: the fastest way to load many rows."""
    async with conn.cursor().copy(QUERIES[name]) as copy:
        for row in rows:
            await copy.write_row(row)


# Errors the database raises about the data of a statement (bad values, violated
# constraints): the same statement would fail again.
DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError)


# Arrays go to the server as array literals: joining strings is many times cheaper
# than psycopg's dumping of a Python list, element by element.
def int_array(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def optional_int_array(values: Iterable[int | None]) -> str:
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


def bool_array(values: Iterable[bool]) -> str:
    return "{" + ",".join("true" if v else "false" for v in values) + "}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text_array(values: Iterable[str]) -> str:
    # Joined on NUL (which no text value holds), escaped and split into quoted elements
    # all at once: four times cheaper than quoting each; per element if one holds a NUL.
    items = values if isinstance(values, list) else list(values)
    if not items:
        return "{}"
    joined = "\x00".join(items)
    if joined.count("\x00") != len(items) - 1:
        return "{" + ",".join(map(_quote, items)) + "}"
    return '{"' + joined.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", '","') + '"}'


def bool_table(rows: Iterable[Iterable[bool]]) -> str:
    """A two-dimensional array literal of booleans."""
    return "{" + ",".join(bool_array(row) for row in rows) + "}"


def int_table(rows: Iterable[Iterable[int | None]]) -> str:
    """A two-dimensional array literal; None is NULL."""
    return "{" + ",".join(optional_int_array(row) for row in rows) + "}"
