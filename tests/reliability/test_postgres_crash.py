"""PostgreSQL crashes (SIGKILL of the postmaster and every backend) three times during a
20,000-message delivery: once with PrepareDelivery in flight, once during the relay and
once during the ingest, each time restarted after 0 to 5 s (seeded). Crash recovery
keeps what was committed and nothing else: the interrupted preparation left nothing
behind and a retry prepared the delivery whole; at the end nothing is lost or counted
twice, against the stub's record, ComputeStats, the address table and the event feed.

The test runs its own embedded server (whatever DATABASE_URL says), since it kills it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import psycopg
from delivery.v1 import delivery_service_pb2 as pb

from tests.conftest import Servers
from tests.reliability import scenario
from tests.reliability.feed_exact import assert_feed_exact
from tests.reliability.scenario import EVENTS, RELAYED, count
from tests.support import drift
from tests.support.own_postgres import crash, own_postgres, reaping_orphans
from tests.support.processes import wait_until
from tools import embedded_pg

N = 20_000
VALIDITY = 30
# The restart delays: 0 to 5 s each, the same on every run.
SEED = 15
# The preparation's last insert, held back by the test's lock: the crash lands inside
# its transaction, after it queued every message.
PREPARING = (
    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    " AND query LIKE '%INSERT INTO dropped_recipients%'"
)


def test_postgres_crashes_during_delivery(servers: Servers) -> None:
    delays = random.Random(SEED)
    figures: list[str] = []
    with reaping_orphans(), own_postgres("crashed") as (data_dir, url):

        def crash_and_restart(where: str) -> None:
            killed = crash(data_dir)
            delay = delays.uniform(0, 5)
            time.sleep(delay)  # the outage itself, not a wait for a condition
            started = time.monotonic()
            embedded_pg.start(data_dir)
            figures.append(
                f"{where}: {killed} processes killed, down {delay:.1f} s, "
                f"recovered in {time.monotonic() - started:.1f} s"
            )

        stub = servers.mta_stub("--retry-interval-ms", "300", "--engagement-delay-ms", "100")
        service = servers.delivery_service(
            url, stub.address, "--finalize-grace", "3", "--tick", "0.1"
        )
        delivery_id = prepare_through_a_crash(url, service.address, stub.address, crash_and_restart)
        scenario.call(
            service.address, "ConfirmSend", pb.ConfirmSendRequest(delivery_id=delivery_id)
        )

        relayed = wait_until(lambda: at_least(url, RELAYED, 6000), 120, message="6,000 relayed")
        assert relayed < N, "the relay was over before the crash"
        crash_and_restart(f"relay ({relayed:,} messages marked relayed)")
        events = wait_until(lambda: at_least(url, EVENTS, 15_000), 120, message="15,000 events")
        crash_and_restart(f"ingest ({events:,} events applied)")

        scenario.wait_finished(lambda: service.address, delivery_id)
        outcome = scenario.assert_exact(url, service.address, stub.address, delivery_id, N)
        assert outcome.unacknowledged_events == 0
        served = assert_feed_exact(url, service.address, delivery_id)
        drift.assert_no_drift([service.log_path])
        print("\n" + "\n".join(figures))
        print(
            f"lost 0, counted twice 0: {outcome.accepted} accepted once, {outcome.duplicates} "
            f"relayed again and deduplicated; feed: {served} events, each once"
        )


def at_least(url: str, query: str, threshold: int) -> int:
    """The count, once it reached the threshold (0 before)."""
    n = count(url, query)
    return n if n >= threshold else 0


def prepare_through_a_crash(
    url: str, service: str, stub: str, crash_and_restart: Callable[[str], None]
) -> int:
    """Creates the delivery; its PrepareDelivery is held inside its transaction by a lock
    the test takes, the database crashes under it; the caller is told UNAVAILABLE, the
    delivery is still a draft with nothing queued, and a retry prepares it whole."""
    holder = psycopg.connect(url)
    holder.execute("LOCK TABLE dropped_recipients IN SHARE MODE")
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(scenario.start_delivery, url, service, stub, N, VALIDITY)
        wait_until(lambda: count(url, PREPARING) == 1, 60, message="PrepareDelivery in flight")
        crash_and_restart(f"preparation ({N:,} messages queued, not committed)")
        error = sent.exception(timeout=60)
    holder.close()
    assert isinstance(error, grpc.RpcError), error
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    delivery_id = count(url, "SELECT max(id) FROM deliveries")

    def state() -> int:
        got = scenario.call(service, "GetDelivery", pb.GetDeliveryRequest(delivery_id=delivery_id))
        return int(got.delivery.state)

    assert wait_until(state, 30, ignore=(grpc.RpcError,)) == pb.STATE_DRAFT
    for table in ("sending_logs", "dropped_recipients", "delivery_domains"):
        assert count(url, f"SELECT count(*) FROM {table}") == 0, f"{table}: half-prepared"
    prepared = scenario.call(
        service, "PrepareDelivery", pb.PrepareDeliveryRequest(delivery_id=delivery_id)
    )
    assert prepared.delivery.to_deliver == N
    assert count(url, "SELECT count(*) FROM sending_logs") == N
    return delivery_id
