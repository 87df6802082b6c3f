"""PostgreSQL restarts while feedback streams in: both sides reconnect, nothing is lost.

The test runs its own embedded server (whatever DATABASE_URL says), since it stops it.
"""

from __future__ import annotations

from tests.conftest import Servers
from tests.reliability import scenario
from tests.reliability.scenario import EVENTS, count
from tests.support import drift
from tests.support.own_postgres import own_postgres
from tests.support.processes import wait_until
from tools import embedded_pg

N = 10_000


def test_postgres_restart_during_ingest(servers: Servers) -> None:
    with own_postgres("restarted") as (data_dir, url):
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
