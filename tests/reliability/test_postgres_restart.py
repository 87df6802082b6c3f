"""PostgreSQL restarts while feedback streams in: both sides reconnect, nothing is lost.

The test runs its own embedded server (whatever DATABASE_URL says), since it stops it.
"""

from __future__ import annotations

import secrets
import shutil

import psycopg

from delivery_service import admin
from tests.conftest import Servers
from tests.reliability import scenario
from tests.reliability.scenario import EVENTS, count
from tests.support import drift
from tests.support.processes import wait_until
from tools import embedded_pg

N = 10_000


def test_postgres_restart_during_ingest(servers: Servers) -> None:
    # Beside the shared server's data: pytest's own temporary folders are closed to the
    # system user the server runs as.
    data_dir = embedded_pg.DEFAULT_DATA_DIR.parent / f"pg-restart-{secrets.token_hex(4)}"
    server_url = embedded_pg.start(data_dir)
    try:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE restarted")
        url = embedded_pg.make_url(server_url, dbname="restarted")
        admin.migrate(url)
        stub = servers.mta_stub("--retry-interval-ms", "200", "--engagement-delay-ms", "50")
        service = servers.delivery_service(url, stub.address, "--finalize-grace", "3")
        delivery_id = scenario.start_delivery(url, service.address, stub.address, N, 20)
        for threshold in (2000, 9000):
            wait_until(lambda t=threshold: count(url, EVENTS) >= t, 120)  # type: ignore[misc]
            embedded_pg.restart(data_dir)
        scenario.wait_finished(lambda: service.address, delivery_id)
        outcome = scenario.assert_exact(url, service.address, stub.address, delivery_id, N)
        assert outcome.unacknowledged_events == 0
        drift.assert_no_drift([service.log_path])
    finally:
        embedded_pg.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
