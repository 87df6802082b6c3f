"""Two delivery-service processes on one database and one MTA, sharing one port: each
message is relayed once in effect, each event applied once, and the figures are exact;
without --reuse-port a second process on a busy port fails to start."""

from __future__ import annotations

import pytest

from tests.conftest import Servers
from tests.reliability import scenario
from tools.processes import ServerProcessError

N = 10_000


def test_two_processes_share_the_work_exactly(fresh_db_url: str, servers: Servers) -> None:
    stub = servers.mta_stub("--retry-interval-ms", "200", "--engagement-delay-ms", "50")
    # One port for both, as one process per core on a machine serves it.
    first = servers.delivery_service(
        fresh_db_url, stub.address, "--finalize-grace", "3", "--reuse-port"
    )
    second = servers.delivery_service(
        fresh_db_url, stub.address, "--finalize-grace", "3", "--reuse-port", port=first.port
    )
    assert second.address == first.address
    delivery_id = scenario.start_delivery(fresh_db_url, first.address, stub.address, N, 15)
    scenario.wait_finished(lambda: second.address, delivery_id)
    outcome = scenario.assert_exact(fresh_db_url, second.address, stub.address, delivery_id, N)
    print(f"\ntwo processes: accepted {outcome.accepted}, relays deduplicated {outcome.duplicates}")


def test_a_second_process_without_reuse_port_does_not_share_a_busy_port(
    fresh_db_url: str, servers: Servers
) -> None:
    stub = servers.mta_stub()
    first = servers.delivery_service(fresh_db_url, stub.address, "--reuse-port")
    with pytest.raises(ServerProcessError):
        servers.delivery_service(fresh_db_url, stub.address, port=first.port)
