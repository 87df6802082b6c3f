"""The database roles of docker-compose.yml, tried on a real PostgreSQL: the init script
(docker/initdb/10-roles.sql) run as the image runs it (psql, as the superuser), the
migrations as the owner, and the pair delivering with the service connected as the
runtime role, which can change no schema.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from delivery.v1 import delivery_service_pb2 as pb
from psycopg import sql

from delivery_service import admin
from tests.conftest import Servers
from tests.integration import flows
from tests.integration.conftest import Pair, open_pair
from tools import embedded_pg
from tools.processes import REPO_ROOT

INIT_SQL = REPO_ROOT / "docker" / "initdb" / "10-roles.sql"


@dataclass(frozen=True)
class Roles:
    owner_url: str
    runtime_url: str


def run_init_script(pg_url: str, database: str, owner: str, runtime: str, folder: Path) -> None:
    """10-roles.sql as the postgres image runs it, with this test's names for the
    database, the roles and the password files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("owner", "runtime"):
        (folder / name).write_text(secrets.token_urlsafe(24), encoding="utf-8")
    script = (
        INIT_SQL.read_text(encoding="utf-8")
        .replace("/run/secrets/db/", f"{folder}/")
        .replace("delivery_owner", owner)
        .replace("delivery_app", runtime)
        .replace("DATABASE delivery", f"DATABASE {database}")
        .replace("\\connect delivery", f"\\connect {database}")
    )
    result = subprocess.run(
        [
            str(embedded_pg.bin_dir() / "psql"),
            embedded_pg.make_url(pg_url, dbname=database),
            *("-v", "ON_ERROR_STOP=1", "-X", "-q", "-f", "-"),
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def roles(pg_url: str, tmp_path: Path) -> Iterator[Roles]:
    suffix = secrets.token_hex(4)
    database, owner, runtime = f"lp_{suffix}", f"owner_{suffix}", f"app_{suffix}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'").format(
                sql.Identifier(database)
            )
        )
    try:
        run_init_script(pg_url, database, owner, runtime, tmp_path / "secrets")
        password = {n: (tmp_path / "secrets" / n).read_text() for n in ("owner", "runtime")}
        yield Roles(
            embedded_pg.make_url(pg_url, dbname=database, user=owner, password=password["owner"]),
            embedded_pg.make_url(
                pg_url, dbname=database, user=runtime, password=password["runtime"]
            ),
        )
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
            for role in (runtime, owner):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
async def runtime_pair(roles: Roles, servers: Servers) -> AsyncIterator[Pair]:
    """The pair, the service connected as the runtime role once the owner migrated."""
    admin.migrate(roles.owner_url)
    processes = servers.pair(
        roles.runtime_url,
        ("--retry-interval-ms", "100", "--engagement-delay-ms", "50"),
        ("--no-migrate",),
    )
    async for pair in open_pair(processes.service, processes.stub, roles.owner_url):
        yield pair


def test_the_runtime_role_can_change_no_schema(roles: Roles) -> None:
    admin.migrate(roles.owner_url)
    with psycopg.connect(roles.runtime_url, autocommit=True) as conn:
        for statement in (
            "CREATE TABLE intruder (id int)",
            "DROP TABLE deliveries",
            "ALTER TABLE deliveries ADD COLUMN intruder int",
            "TRUNCATE sending_logs",
            "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.encode())
        # What it is for, it may: read and write rows.
        assert conn.execute(b"SELECT count(*) FROM deliveries").fetchone() == (0,)
    # Nor can it run the migrations: the service runs with --no-migrate.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        admin.migrate(roles.runtime_url)


async def test_the_service_delivers_as_the_runtime_role(runtime_pair: Pair) -> None:
    emails = ["ann@example.com", "hard-user-unknown@example.com", "open@example.com"]
    delivery = await flows.send(runtime_pair, flows.request(emails, validity_seconds=2))
    await flows.wait_state(runtime_pair, delivery.id, pb.STATE_FINISHED)
    kpis = await flows.kpis(runtime_pair, delivery.id)
    assert (kpis.to_deliver, kpis.sent, kpis.delivered, kpis.failed, kpis.opened) == (
        3,
        3,
        2,
        1,
        1,
    )
    stats = await runtime_pair.api.ComputeStats(
        pb.ComputeStatsRequest(delivery_id=delivery.id), timeout=30
    )
    assert stats.repaired_counters == 0
