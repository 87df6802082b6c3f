"""The delivery service's public admin surface: the one way tools (the CLI, the demo,
the benchmark, the tests) migrate a database and create operators.

Nothing outside `delivery_service` imports its other modules (tests/unit/test_imports.py
keeps it so): what a tool needs of the service's database goes through here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from delivery_service import validation
from delivery_service.domain import addresses, kpis
from delivery_service.domain.roles import Role
from delivery_service.store import connection, distribution, migrations
from delivery_service.usecases import operators

# The role names an operator can hold, as the CLI offers them.
ROLES: tuple[str, ...] = tuple(str(r) for r in Role)
# The most recipients one CreateDelivery or AddRecipients takes: the CLI splits a longer
# list by it.
RECIPIENTS_PER_REQUEST = validation.MAX_RECIPIENTS
# Preparation's rules, for the benchmark's plain-SQL reference of it: the two address
# patterns (domain.addresses) and how many domains the breakdown ranks.
ADDRESS_PATTERN = addresses.ADDRESS_PATTERN
LONG_LABEL_PATTERN = addresses.LONG_LABEL_PATTERN
LARGEST_DOMAINS = kpis.LARGEST_DOMAINS


def statement(name: str) -> str:
    """The SQL of one of the service's named queries, its placeholders `%(name)s`: the
    benchmark sends GetKpis' own statement to the database directly as its reference."""
    return connection.QUERIES[name].decode()


class AdminError(Exception):
    """An admin call failed; str() says why."""


class OperatorExists(AdminError):
    """An operator of that name exists already."""


class DatabaseUnavailable(AdminError):
    """The database cannot be reached."""


class NotCitus(AdminError):
    """The distribution step was asked of a database that is no Citus coordinator."""


def migrate(database_url: str) -> list[str]:
    """Brings the database's schema up to date; returns the migrations applied."""
    try:
        return migrations.apply(database_url)
    except connection.Unavailable as exc:
        raise DatabaseUnavailable(f"cannot reach the database: {exc}") from None


def distribute(database_url: str) -> list[str]:
    """On a Citus coordinator, after the migrations: places every table as
    docs/scaling.md declares it (reference tables, then deliveries and the tables
    colocated with it, then the rest). Idempotent; returns the tables it placed."""
    try:
        distribution.require_citus(database_url)
        migrate(database_url)
        return distribution.distribute(database_url)
    except distribution.NotCitus as exc:
        raise NotCitus(str(exc)) from None


async def create_operator(
    database_url: str, name: str, roles: Sequence[str], *, timeout: float = 30.0
) -> str:
    """Creates an operator with the given roles (migrating the schema first if needed);
    returns its token, which is stored only as a hash and cannot be shown again."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise AdminError(f"unknown roles {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    migrate(database_url)
    async with _database(database_url, timeout) as db:
        try:
            _, token = await operators.create(db, name, list(roles))
        except connection.Conflict as exc:
            raise OperatorExists(str(exc)) from None
    return token


async def revoke_operator(database_url: str, name: str, *, timeout: float = 30.0) -> None:
    """Revokes an operator: its token is refused from then on (a tool's own operator,
    once the tool is done with it)."""
    async with _database(database_url, timeout) as db:
        try:
            await operators.revoke(db, name)
        except connection.NotFound:
            raise AdminError(f"no operator named {name!r}") from None


@asynccontextmanager
async def _database(database_url: str, timeout: float) -> AsyncIterator[connection.Database]:
    """A pool of one connection for an admin call; an unreachable database is
    DatabaseUnavailable."""
    db = connection.Database(database_url, min_size=1, max_size=1)
    try:
        await db.open(timeout=timeout)
        yield db
    except connection.Unavailable as exc:
        raise DatabaseUnavailable(f"cannot reach the database: {exc}") from None
    finally:
        await db.close()
