"""Two delivery-service processes on one database and one MTA: each message is relayed
once in effect, each event applied once, and the figures are exact."""

from __future__ import annotations

from tests.conftest import Servers
from tests.reliability import scenario

N = 10_000


def test_two_processes_share_the_work_exactly(fresh_db_url: str, servers: Servers) -> None:
    stub = servers.mta_stub("--retry-interval-ms", "200", "--engagement-delay-ms", "50")
    first = servers.delivery_service(fresh_db_url, stub.address, "--finalize-grace", "3")
    second = servers.delivery_service(fresh_db_url, stub.address, "--finalize-grace", "3")
    delivery_id = scenario.start_delivery(fresh_db_url, first.address, stub.address, N, 15)
    scenario.wait_finished(lambda: second.address, delivery_id)
    outcome = scenario.assert_exact(fresh_db_url, second.address, stub.address, delivery_id, N)
    print(f"\ntwo processes: accepted {outcome.accepted}, relays deduplicated {outcome.duplicates}")
