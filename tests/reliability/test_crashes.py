"""kill -9, again and again, during a 20,000-message delivery: nothing lost, nothing twice.

The delivery service is killed at five points (during the relay and during the
feedback), the stub at three, each restarted at once on the same database, spool and
port. Kill points are progress conditions (so many relayed, so many events applied),
not timers. After the validity ends every message has exactly one final status, the
stub accepted each message id once, and the KPIs equal both ComputeStats and the
stub's own record.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc

from tests.conftest import Servers
from tests.support.processes import ServerProcess, create_operator, wait_until

N = 20_000
MIX = mta.Mix(
    seed=7,
    hard_bounce_rate=0.04,
    soft_then_delivered_rate=0.08,
    soft_until_expiry_rate=0.02,
    open_rate=0.25,
    click_rate=0.3,
    max_retries=2,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def count(database_url: str, query: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    value: int = row[0]
    return value


def test_kill_nine_during_delivery(fresh_db_url: str, servers: Servers, tmp_path: Path) -> None:
    mta_port = free_port()
    spool = tmp_path / "spool.sqlite3"
    stub_args = ("--port", str(mta_port), "--spool", str(spool), "--retry-interval-ms", "300",
                 "--engagement-delay-ms", "100")  # fmt: skip

    def start_stub() -> ServerProcess:
        return servers.mta_stub(*stub_args)

    def start_service() -> ServerProcess:
        return servers.delivery_service(
            fresh_db_url, f"127.0.0.1:{mta_port}", "--finalize-grace", "3", "--tick", "0.1"
        )

    stub = start_stub()
    service = start_service()
    token = create_operator(fresh_db_url, "sender", "start_deliveries")
    with grpc.insecure_channel(stub.address) as channel:
        mta_grpc.MtaServiceStub(channel).SetScenario(mta.SetScenarioRequest(mix=MIX), timeout=10)

    def api_call(method: str, request: object, **kw: object) -> object:
        with grpc.insecure_channel(service.address) as channel:
            return getattr(pb_grpc.DeliveryServiceStub(channel), method)(request, timeout=60, **kw)

    for start in range(0, N, 5000):
        api_call(
            "UpsertProfiles",
            pb.UpsertProfilesRequest(
                profiles=[
                    pb.Profile(profile_id=f"p{i}", email=f"u{i}@example.com", segments=["all"])
                    for i in range(start, start + 5000)
                ]
            ),
        )
    created = api_call(
        "CreateDelivery",
        pb.CreateDeliveryRequest(
            label="crash",
            content=pb.Content(subject="s", body="b", links=["https://example.com"]),
            target=pb.Target(segment="all"),
            validity_period=duration_pb2.Duration(seconds=25),
            feedback_mode=pb.FEEDBACK_MODE_EFS,
        ),
    )
    delivery_id = created.delivery.id  # type: ignore[attr-defined]
    api_call("PrepareDelivery", pb.PrepareDeliveryRequest(delivery_id=delivery_id))
    api_call(
        "ConfirmSend",
        pb.ConfirmSendRequest(delivery_id=delivery_id),
        metadata=[("authorization", f"Bearer {token}")],
    )

    relayed = "SELECT count(*) FROM sending_logs WHERE relay_time IS NOT NULL"
    events = "SELECT count(*) FROM feedback_events"

    def at(query: str, threshold: int) -> Callable[[], bool]:
        return lambda: count(fresh_db_url, query) >= threshold

    kills = 0
    # Three kills while relaying, two while feedback streams in.
    for query, threshold in [(relayed, 1), (relayed, 6000), (relayed, 12000),
                             (events, 21000), (events, 24000)]:  # fmt: skip
        wait_until(at(query, threshold), 120, message=f"{query} >= {threshold}")
        service.kill()
        kills += 1
        service = start_service()
    for threshold in (25000, 26000, 27000):
        wait_until(at(events, threshold), 120, message=f"events >= {threshold}")
        stub.kill()
        kills += 1
        stub = start_stub()

    def finished() -> bool:
        state = api_call("GetDelivery", pb.GetDeliveryRequest(delivery_id=delivery_id))
        return bool(state.delivery.state == pb.STATE_FINISHED)  # type: ignore[attr-defined]

    wait_until(finished, 180, interval=0.25, message="delivery FINISHED")
    assert kills == 8

    # Every message has exactly one final status.
    assert count(fresh_db_url, "SELECT count(*) FROM sending_logs") == N
    assert count(fresh_db_url, "SELECT count(*) FROM sending_logs WHERE status NOT IN (3, 4)") == 0
    with grpc.insecure_channel(stub.address) as channel:
        outcome = mta_grpc.MtaServiceStub(channel).GetOutcomes(
            mta.GetOutcomesRequest(delivery_id=delivery_id), timeout=10
        )
    assert outcome.accepted == N, "each message id accepted exactly once by the MTA"
    kpis = api_call("GetKpis", pb.GetKpisRequest(delivery_id=delivery_id)).kpis  # type: ignore[attr-defined]
    stats = api_call("ComputeStats", pb.ComputeStatsRequest(delivery_id=delivery_id))
    assert stats.repaired_counters == 0  # type: ignore[attr-defined]
    recomputed = stats.kpis  # type: ignore[attr-defined]
    for name in ("to_deliver", "sent", "delivered", "failed", "pending", "opened", "clicked"):
        assert getattr(kpis, name) == getattr(recomputed, name), name
    assert kpis.final and kpis.to_deliver == N and kpis.sent == N
    assert kpis.delivered == outcome.delivered
    assert kpis.failed == outcome.hard_bounced + outcome.expired
    assert (kpis.opened, kpis.clicked) == (outcome.opened, outcome.clicked)
    print(
        f"kills survived: {kills} (5 delivery service, 3 stub); relays deduplicated by the "
        f"stub: {outcome.duplicates}; lost: {N - outcome.accepted}; "
        f"delivered {outcome.delivered}, hard {outcome.hard_bounced}, expired {outcome.expired}"
    )
