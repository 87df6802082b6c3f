"""kill -9, again and again, during a 20,000-message delivery: nothing lost, nothing twice.

The delivery service is killed at five points (three during the relay, two during
the feedback), the stub at three, each restarted at once on the same database, spool
and port. Kill points are progress conditions (so many relayed, so many events
applied), not timers. After the validity ends every message has exactly one final
status, the stub accepted each message id once, and the KPIs equal both ComputeStats
and the stub's own record.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import Servers
from tests.reliability import scenario
from tests.reliability.scenario import EVENTS, RELAYED, count
from tests.support import drift
from tests.support.processes import ServerProcess, wait_until

N = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_kill_nine_during_delivery(fresh_db_url: str, servers: Servers, tmp_path: Path) -> None:
    mta_port = free_port()
    spool = tmp_path / "spool.sqlite3"

    def start_stub() -> ServerProcess:
        return servers.mta_stub(
            "--port", str(mta_port), "--spool", str(spool),
            "--retry-interval-ms", "300", "--engagement-delay-ms", "100",
        )  # fmt: skip

    def start_service() -> ServerProcess:
        return servers.delivery_service(
            fresh_db_url, f"127.0.0.1:{mta_port}", "--finalize-grace", "3", "--tick", "0.1"
        )

    stub = start_stub()
    service = start_service()
    delivery_id = scenario.start_delivery(fresh_db_url, service.address, stub.address, N, 25)

    def reached(query: str, threshold: int) -> None:
        wait_until(lambda: count(fresh_db_url, query) >= threshold, 120,
                   message=f"{query} >= {threshold}")  # fmt: skip

    kills = 0
    for query, threshold in [(RELAYED, 1), (RELAYED, 6000), (RELAYED, 12000),
                             (EVENTS, 21000), (EVENTS, 23000)]:  # fmt: skip
        reached(query, threshold)
        service.kill()
        kills += 1
        service = start_service()
    for threshold in (24000, 25000, 26000):
        reached(EVENTS, threshold)
        stub.kill()
        kills += 1
        stub = start_stub()

    scenario.wait_finished(lambda: service.address, delivery_id)
    outcome = scenario.assert_exact(fresh_db_url, service.address, stub.address, delivery_id, N)
    drift.assert_no_drift([p.log_path for p in servers.started if "delivery" in p.name])
    print(
        f"\nkills survived: {kills} (5 delivery service, 3 stub); relayed again and "
        f"deduplicated by the stub: {outcome.duplicates}; lost: {N - outcome.accepted}"
    )
