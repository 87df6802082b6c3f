"""The database unreachable for 60 s, longer than any client's deadline (the CLI's is
30 s), while feedback streams in: the server and every backend frozen (SIGSTOP), as
behind a network partition, so nothing answers at all, not even a refusal. Callers get
UNAVAILABLE well within their deadline all along (GetKpis every few seconds), the MTA
gets no acknowledgement of what was not committed, and when the database answers again
everything resumes by itself: the delivery ends exact against the stub's record.

60 s of outage is the point, so the delivery is small (2,000 messages) and its validity
just long enough to hold the outage: about 80 s in all.
The test runs its own embedded server (whatever DATABASE_URL says), since it freezes it.
"""

from __future__ import annotations

import time

import grpc

from tests.conftest import Servers
from tests.reliability import scenario
from tests.reliability.feed_exact import assert_feed_exact
from tests.reliability.scenario import EVENTS, count
from tests.reliability.test_database_down import DEADLINE, get_kpis, unavailable_after
from tests.support import drift
from tests.support.own_postgres import frozen, own_postgres
from tests.support.processes import wait_until

N = 2_000
OUTAGE = 60.0
# Confirmed, then about 5 s to the outage, the outage, and time to catch up after it:
# feedback applied after the validity would no longer change the figures.
VALIDITY = 85
EVERY = 3.0


def test_database_unreachable_for_a_minute(servers: Servers) -> None:
    with own_postgres("unreachable") as (data_dir, url):
        stub = servers.mta_stub("--retry-interval-ms", "1000", "--engagement-delay-ms", "100")
        service = servers.delivery_service(url, stub.address, "--finalize-grace", "3")
        delivery_id = scenario.start_delivery(url, service.address, stub.address, N, VALIDITY)
        wait_until(lambda: count(url, EVENTS) >= 500, 60, message="500 events applied")
        before = scenario.unacknowledged(stub.address, delivery_id)
        answers: list[float] = []
        with frozen(data_dir):
            start = time.monotonic()
            while time.monotonic() - start < OUTAGE:
                answers.append(unavailable_after(service.address, delivery_id))
                # The pace of a caller polling, not a wait for a condition.
                time.sleep(max(0.0, EVERY - answers[-1]))
            held = scenario.unacknowledged(stub.address, delivery_id)
        thawed = time.monotonic()
        wait_until(lambda: get_kpis(service.address, delivery_id), 30, ignore=(grpc.RpcError,),
                   message="GetKpis still failing")  # fmt: skip
        answered = time.monotonic() - thawed
        scenario.wait_finished(lambda: service.address, delivery_id)
        outcome = scenario.assert_exact(url, service.address, stub.address, delivery_id, N)
        wait_until(lambda: scenario.unacknowledged(stub.address, delivery_id) == 0, 30,
                   message="feedback left unacknowledged")  # fmt: skip
        served = assert_feed_exact(url, service.address, delivery_id)
        drift.assert_no_drift([service.log_path])
        print(
            f"\nunreachable {OUTAGE:g} s: {len(answers)} GetKpis, all UNAVAILABLE, after "
            f"{min(answers):.2f} to {max(answers):.2f} s (deadline {DEADLINE:g} s); "
            f"unacknowledged events {before} before, {held} at the end of the outage; "
            f"back: GetKpis answered after {answered:.2f} s; {outcome.delivered} delivered, "
            f"feed {served} events, each once"
        )
        assert max(answers) < 8.0, "UNAVAILABLE must come well within the deadline"
