"""Three delivery-service processes on one database, the normal deployment: relay,
ingest and the scheduler's rounds run in all three, one is killed (SIGKILL) in the middle
of the delivery, and each message is still relayed and applied once, the figures exact."""

from __future__ import annotations

import signal

from tests.conftest import Servers
from tests.reliability import scenario
from tests.support.processes import wait_until

N = 10_000


def test_three_processes_one_killed_share_the_work_exactly(
    fresh_db_url: str, servers: Servers
) -> None:
    stub = servers.mta_stub("--retry-interval-ms", "200", "--engagement-delay-ms", "50")
    services = [
        servers.delivery_service(fresh_db_url, stub.address, "--finalize-grace", "3")
        for _ in range(3)
    ]
    delivery_id = scenario.start_delivery(fresh_db_url, services[0].address, stub.address, N, 15)
    # Killed once the relay and the feedback are both under way.
    wait_until(
        lambda: scenario.count(fresh_db_url, scenario.EVENTS) > N // 10,
        120,
        message="feedback under way",
    )
    services[0].send_signal(signal.SIGKILL)
    services[0].wait(10)
    scenario.wait_finished(lambda: services[2].address, delivery_id)
    outcome = scenario.assert_exact(fresh_db_url, services[1].address, stub.address, delivery_id, N)
    print(
        f"\nthree processes: accepted {outcome.accepted}, relays deduplicated {outcome.duplicates}"
    )
