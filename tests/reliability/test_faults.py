"""The stub's faults all on at once: every event duplicated, events reordered within
windows of 100, the stream dropped every 5 feedback batches, each batch delayed up to
a second. The final figures are exact."""

from __future__ import annotations

import re
import socket
import urllib.request

from mta.v1 import mta_service_pb2 as mta

from tests.conftest import Servers
from tests.reliability import scenario

# Delays of up to 1 s per batch slow the feedback to a few hundred events a second: the
# delivery is sized so that every report lands inside its validity (30 s), as it must for
# the stub's record and the final figures to be comparable.
N = 2000


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_duplicated_reordered_dropped_delayed_feedback(fresh_db_url: str, servers: Servers) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    stub = servers.mta_stub("--retry-interval-ms", "200", "--engagement-delay-ms", "50")
    service = servers.delivery_service(
        fresh_db_url, stub.address, "--finalize-grace", "5", "--metrics-port", str(metrics_port)
    )
    faults = mta.Faults(
        duplicate_events=True, reorder_window=100, drop_stream_every=5, max_delay_ms=1000
    )
    delivery_id = scenario.start_delivery(
        fresh_db_url, service.address, stub.address, N, 30, faults
    )
    scenario.wait_finished(lambda: service.address, delivery_id)
    scenario.call_mta(stub.address, "SetScenario", mta.SetScenarioRequest(faults=mta.Faults()))
    outcome = scenario.assert_exact(fresh_db_url, service.address, stub.address, delivery_id, N)
    duplicates = scrape(metrics_port, "delivery_feedback_events_deduplicated_total")
    reconnects = scrape(metrics_port, "delivery_mta_stream_reconnects_total")
    applied = scrape(metrics_port, "delivery_feedback_events_applied_total")
    assert duplicates >= applied > N, "every event was sent twice and applied once"
    assert reconnects >= 3, "the stream was dropped and resumed"
    print(
        f"\nfaults: {applied:.0f} events applied once, {duplicates:.0f} duplicates skipped, "
        f"reorder window 100, {reconnects:.0f} stream drops resumed; "
        f"delivered {outcome.delivered}, hard {outcome.hard_bounced}, expired {outcome.expired}; "
        "lost 0, double-counted 0"
    )
