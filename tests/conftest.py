"""Fixtures of every suite: a real PostgreSQL, a fresh database per test, the servers as processes.

PostgreSQL is `DATABASE_URL` when set, else the embedded server under ./.data/pg, which
is left running for the next session (`make db-stop` stops it). The schema is applied
once per session to a template database; each test gets a copy of it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.support.processes import (
    ServerProcess,
    StartDeliveryService,
    StartMtaStub,
)
from tools import embedded_pg
from tools.pair import Launcher, Pair

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Kept so that process fixtures know at teardown whether to show their logs.
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The server the suite runs against (its maintenance database)."""
    return os.environ.get("DATABASE_URL", "").strip() or embedded_pg.start(
        embedded_pg.DEFAULT_DATA_DIR
    )


def _admin(pg_url: str) -> psycopg.Connection[tuple[object, ...]]:
    # CREATE/DROP DATABASE cannot run inside a transaction.
    return psycopg.connect(pg_url, autocommit=True)


@pytest.fixture(scope="session")
def template_db(pg_url: str) -> Iterator[str]:
    """The name of a database holding the migrated schema, cloned by fresh_db_url."""
    # Imported here: a service that does not import yet must not stop unit tests collecting.
    from delivery_service import admin

    name = f"tmpl_{secrets.token_hex(4)}"
    with _admin(pg_url) as conn:
        # template0 and a fixed locale: the same text ordering on every server.
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'").format(
                sql.Identifier(name)
            )
        )
    try:
        admin.migrate(embedded_pg.make_url(pg_url, dbname=name))
        with _admin(pg_url) as conn:
            # No connections: no session (not even autovacuum) can be on the template when
            # CREATE DATABASE copies it, which would make the copy fail.
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                    sql.Identifier(name)
                )
            )
        yield name
    finally:
        with _admin(pg_url) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name))
            )
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def fresh_database(pg_url: str, template_db: str) -> Iterator[str]:
    name = f"t_{secrets.token_hex(6)}"
    with _admin(pg_url) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    try:
        yield embedded_pg.make_url(pg_url, dbname=name)
    finally:
        with _admin(pg_url) as conn:
            # FORCE: a service the test left running must not keep the database alive.
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def fresh_db_url(pg_url: str, template_db: str) -> Iterator[str]:
    """A postgresql:// URL of a new database with the schema, dropped after the test."""
    with fresh_database(pg_url, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def module_db_url(pg_url: str, template_db: str) -> Iterator[str]:
    """The same, shared by the tests of one module."""
    with fresh_database(pg_url, template_db) as url:
        yield url


# Quick KPI rounds and end of validity, for tests that wait on them; a test's own flags,
# given later, override these.
_DELIVERY_DEFAULTS = ("--stats-interval", "1", "--finalize-grace", "1")


class Servers:
    """The servers one fixture started, on free ports and SERVING (tools.pair starts them):
    stopped at teardown, their logs shown if a test failed."""

    def __init__(self, request: pytest.FixtureRequest, log_dir: Path) -> None:
        self.request = request
        self.launcher = Launcher(log_dir=log_dir)
        self.started: list[ServerProcess] = []

    def mta_stub(self, *args: str) -> ServerProcess:
        """`python -m mta_stub *args`."""
        return self._keep(self.launcher.mta_stub(*args))

    def delivery_service(
        self, database_url: str, mta_address: str, *args: str, port: int = 0
    ) -> ServerProcess:
        """`python -m delivery_service --stats-interval 1 --finalize-grace 1 *args`, on
        `port` (0: a free one)."""
        return self._keep(
            self.launcher.delivery_service(
                database_url, mta_address, *_DELIVERY_DEFAULTS, *args, port=port
            )
        )

    def pair(
        self, database_url: str, stub_args: Sequence[str] = (), service_args: Sequence[str] = ()
    ) -> Pair:
        """An MTA stub and a delivery service (with the defaults above) relaying to it."""
        pair = self.launcher.pair(
            database_url, stub_args=stub_args, service_args=[*_DELIVERY_DEFAULTS, *service_args]
        )
        for process in pair.processes:
            self._keep(process)
        return pair

    def _keep(self, process: ServerProcess) -> ServerProcess:
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.terminate(timeout=10.0)
        if _failed(self.request):
            # Printed at teardown, so pytest shows it in the failed test's report.
            for process in self.started:
                print(f"\n===== {process!r}, log {process.log_path}\n{process.log_tail(60)}")


@pytest.fixture
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Servers]:
    """Starts servers for one test; all are stopped after it."""
    started = Servers(request, tmp_path / "logs")
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def module_servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    """Starts servers shared by the tests of one module."""
    started = Servers(request, tmp_path_factory.mktemp("servers"))
    yield started
    started.stop_all()


@pytest.fixture
def start_mta_stub(servers: Servers) -> StartMtaStub:
    """Starts `python -m mta_stub` on a free port; every stub started is stopped after the test."""
    return servers.mta_stub


@pytest.fixture(scope="session")
def shared_mta_stub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One MTA stub for the session, quick retries and engagement, for tests that only read."""
    started = Servers(request, tmp_path_factory.mktemp("shared_mta_stub"))
    yield started.mta_stub("--retry-interval-ms", "100", "--engagement-delay-ms", "50")
    started.stop_all()


@pytest.fixture
def start_delivery_service(servers: Servers) -> StartDeliveryService:
    """Starts `python -m delivery_service` on a free port; all are stopped after the test."""
    return servers.delivery_service
