"""The database cancels statements: a statement_timeout of 100 ms and a lock_timeout
of 20 ms on the service's connections (libpq's options), during a 10,000-message
delivery while ComputeStats runs every 0.2 s (its exclusive lock on the counters makes
the relay's and the ingest's writes wait): the feedback statement and the relay's writes
are cancelled some of the time. Every cancellation is retried (the relay on its next
round, a feedback batch with backoff, in halves when batches went together, and
unacknowledged until it commits), a caller gets UNAVAILABLE, nothing is half-applied,
and the end state is exact.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from delivery.v1 import delivery_service_pb2 as pb

from tests.conftest import Servers
from tests.integration.test_health_port import free_port
from tests.reliability import scenario
from tests.reliability.feed_exact import assert_feed_exact
from tests.support import drift
from tests.support.processes import wait_until
from tools import embedded_pg

N = 10_000
# Low enough that the larger feedback batches and the writes that wait on ComputeStats
# are cancelled now and then, high enough that they also get through.
STATEMENT_TIMEOUT_MS = 100
LOCK_TIMEOUT_MS = 20
CANCELLED = {
    "statement timeout": "canceling statement due to statement timeout",
    "lock timeout": "canceling statement due to lock timeout",
}


def test_statements_cancelled_during_delivery(fresh_db_url: str, servers: Servers) -> None:
    options = f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
    timed_url = embedded_pg.make_url(fresh_db_url, options=options)
    stub = servers.mta_stub("--retry-interval-ms", "300", "--engagement-delay-ms", "100")
    # Preparing 10,000 messages takes longer than the timeout: a service without it sets
    # the delivery up, with no MTA to relay to, and hands over to one with it.
    untimed = servers.delivery_service(fresh_db_url, f"127.0.0.1:{free_port()}")
    delivery_id = scenario.start_delivery(fresh_db_url, untimed.address, stub.address, N, 25)
    untimed.terminate()
    service = servers.delivery_service(
        timed_url, stub.address, "--finalize-grace", "3", "--tick", "0.1"
    )
    with recounting(service.address, delivery_id) as answers:
        scenario.wait_finished(lambda: service.address, delivery_id)
    # Checked through a service without the timeouts: the state is what is checked.
    checker = servers.delivery_service(fresh_db_url, stub.address)
    scenario.assert_exact(fresh_db_url, checker.address, stub.address, delivery_id, N)
    # What was committed late is acknowledged late, but all of it.
    wait_until(lambda: scenario.unacknowledged(stub.address, delivery_id) == 0, 30,
               message="feedback left unacknowledged")  # fmt: skip
    served = assert_feed_exact(fresh_db_url, checker.address, delivery_id)
    drift.assert_no_drift([service.log_path, checker.log_path])
    assert service.log_path is not None
    log = service.log_path.read_text()
    cancelled = {
        (flow, why): sum(1 for line in log.splitlines() if flow in line and words in line)
        for flow in ("ingest", "relay")
        for why, words in CANCELLED.items()
    }
    assert answers["repaired"] == 0, "a recount during the delivery repaired a counter"
    print(
        f"\ncancelled: {cancelled}; ComputeStats during the delivery: {answers}; "
        f"feed: {served} events, each once"
    )
    assert sum(cancelled.values()) > 0, "nothing was cancelled: the test tested nothing"


@contextmanager
def recounting(service: str, delivery_id: int) -> Iterator[Counter[str]]:
    """ComputeStats every 0.2 s while the block runs, as an operator might: its exclusive
    lock on the delivery's counters makes the relay's and the ingest's writes wait, past
    the lock_timeout now and then. Each answer is OK or UNAVAILABLE (cancelled too)."""
    answers: Counter[str] = Counter()
    done = threading.Event()

    def recount() -> None:
        while not done.wait(0.2):
            try:
                stats = scenario.call(
                    service, "ComputeStats", pb.ComputeStatsRequest(delivery_id=delivery_id)
                )
            except grpc.RpcError as err:
                answers[err.code().name] += 1
            else:
                answers["OK"] += 1
                answers["repaired"] += stats.repaired_counters

    thread = threading.Thread(target=recount)
    thread.start()
    try:
        yield answers
    finally:
        done.set()
        thread.join()
    assert set(answers) <= {"OK", "UNAVAILABLE", "repaired"}, answers
