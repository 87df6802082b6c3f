"""The connection layer: the pool, the named queries, and driver errors turned into the
store's own. The only module of the service that imports psycopg, with the two that run
at deployment time on a connection of their own: migrations.py and distribution.py.

Queries live in sql/queries/*.sql, one file per flow. They name the domain's values
instead of repeating them: `{State.SENDING}` or `{Status.QUEUED}` is replaced, once at
load time, by the SQL literal of that enum member ('SENDING', 1).
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row, tuple_row
from psycopg_pool import AsyncConnectionPool

from delivery_service.domain import feedback, lifecycle, preparation, recurring
from grpc_common import named_queries

T = TypeVar("T")

Conn = psycopg.AsyncConnection[Any]


class StoreError(Exception):
    """Base of the storage errors the service maps to gRPC statuses."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """The change is not allowed in the current state, or the thing exists already."""


class AlreadyExists(Conflict):
    """A unique constraint refused the row; `constraint` names it."""

    def __init__(self, constraint: str, message: str = "") -> None:
        super().__init__(message or f"already exists ({constraint})")
        self.constraint = constraint


class Unavailable(StoreError):
    """The database cannot be reached right now: worth trying again."""


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


class Database:
    """The pool of connections, opened at start-up; connections are in autocommit."""

    def __init__(self, conninfo: str, *, min_size: int = 2, max_size: int = 20) -> None:
        self.pool = AsyncConnectionPool(
            conninfo,
            connection_class=psycopg.AsyncConnection[Any],
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True},
            # A connection broken by a database restart is replaced, not handed out.
            check=AsyncConnectionPool.check_connection,
            name="delivery",
        )

    async def open(self, timeout: float = 30.0) -> None:
        try:
            await self.pool.open(wait=True, timeout=timeout)
        except psycopg.OperationalError as exc:
            raise Unavailable(str(exc)) from exc
        except TimeoutError as exc:
            raise Unavailable("the database could not be reached in time") from exc

    async def close(self) -> None:
        await self.pool.close()

    def stats(self) -> Mapping[str, int]:
        """The pool's figures (pool_size, pool_available, requests_waiting, ...)."""
        return self.pool.get_stats()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A pooled connection; an unreachable database is Unavailable, during use too."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except psycopg.errors.UniqueViolation as exc:
            raise AlreadyExists(exc.diag.constraint_name or "unique") from exc
        except psycopg.OperationalError as exc:
            raise Unavailable(str(exc)) from exc
        except TimeoutError as exc:  # the pool had no connection in time
            raise Unavailable("no database connection available") from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """A connection inside one transaction, committed when the block ends."""
        async with self.connection() as conn, conn.transaction():
            yield conn


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


def bool_array(values: Iterable[bool]) -> str:
    return "{" + ",".join("true" if v else "false" for v in values) + "}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text_array(values: Iterable[str]) -> str:
    return "{" + ",".join(map(_quote, values)) + "}"


def bool_table(rows: Iterable[Iterable[bool]]) -> str:
    """A two-dimensional array literal of booleans."""
    return "{" + ",".join(bool_array(row) for row in rows) + "}"


def int_table(rows: Iterable[Iterable[int | None]]) -> str:
    """A two-dimensional array literal; None is NULL."""
    return (
        "{"
        + ",".join(
            "{" + ",".join("NULL" if v is None else str(v) for v in row) + "}" for row in rows
        )
        + "}"
    )
