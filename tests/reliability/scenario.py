"""A seeded-mix delivery to a segment of profiles, and the checks that nothing was lost
or counted twice: what every reliability test runs before and after breaking things."""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc

from mta_stub import presets
from tests.support.callers import CALLER_ROLES, bearer
from tests.support.processes import create_operator, wait_until

# The seeded mix with more bounces, fewer opens and at most 2 retries, on a seed of its own.
MIX = presets.variant(
    seed=7, hard_bounce_rate=0.04, soft_then_delivered_rate=0.08, open_rate=0.25, max_retries=2
)

RELAYED = "SELECT count(*) FROM sending_logs WHERE relay_time IS NOT NULL"
EVENTS = "SELECT count(*) FROM feedback_events"


def count(database_url: str, query: str) -> int:
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    value: int = row[0]
    return value


# The metadata of the operator start_delivery created (every role but admin): the one
# delivery a reliability test runs is sent and read by it.
caller: list[tuple[str, str]] = []


def call(address: str, method: str, request: Any, **kw: Any) -> Any:
    """A call to the delivery service as `caller`, unless `metadata` says otherwise."""
    kw.setdefault("metadata", caller)
    with grpc.insecure_channel(address) as channel:
        return getattr(pb_grpc.DeliveryServiceStub(channel), method)(request, timeout=60, **kw)


def call_mta(address: str, method: str, request: Any) -> Any:
    with grpc.insecure_channel(address) as channel:
        return getattr(mta_grpc.MtaServiceStub(channel), method)(request, timeout=10)


def start_delivery(
    database_url: str,
    service: str,
    stub: str,
    n: int,
    validity_seconds: int,
    faults: mta.Faults | None = None,
    mix: mta.Mix = MIX,
) -> int:
    """Sets the stub's mix (MIX unless said) and faults, loads n profiles, confirms a
    delivery to them (EFS), all as a new operator holding every role but admin (`caller`)."""
    caller[:] = bearer(create_operator(database_url, "reliability", *CALLER_ROLES))
    call_mta(stub, "SetScenario", mta.SetScenarioRequest(mix=mix, faults=faults))
    for start in range(0, n, 5000):
        call(
            service,
            "UpsertProfiles",
            pb.UpsertProfilesRequest(
                profiles=[
                    pb.Profile(profile_id=f"p{i}", email=f"u{i}@example.com", segments=["all"])
                    for i in range(start, min(n, start + 5000))
                ]
            ),
        )
    created = call(
        service,
        "CreateDelivery",
        pb.CreateDeliveryRequest(
            label="reliability",
            content=pb.Content(subject="s", body="b", links=["https://example.com"]),
            target=pb.Target(segment="all"),
            validity_period=duration_pb2.Duration(seconds=validity_seconds),
            feedback_mode=pb.FEEDBACK_MODE_EFS,
        ),
    )
    delivery_id: int = created.delivery.id
    call(service, "PrepareDelivery", pb.PrepareDeliveryRequest(delivery_id=delivery_id))
    call(service, "ConfirmSend", pb.ConfirmSendRequest(delivery_id=delivery_id))
    return delivery_id


def unacknowledged(stub: str, delivery_id: int) -> int:
    """The delivery's feedback events the stub holds unacknowledged by the service."""
    outcome = call_mta(stub, "GetOutcomes", mta.GetOutcomesRequest(delivery_id=delivery_id))
    return int(outcome.unacknowledged_events)


def wait_finished(service: Any, delivery_id: int, timeout: float = 180) -> None:
    """`service` is a callable giving the current address (it may have been restarted)."""

    def finished() -> bool:
        got = call(service(), "GetDelivery", pb.GetDeliveryRequest(delivery_id=delivery_id))
        return bool(got.delivery.state == pb.STATE_FINISHED)

    wait_until(finished, timeout, interval=0.25, message="delivery FINISHED",
               ignore=(grpc.RpcError,))  # fmt: skip


def assert_exact(
    database_url: str, service: str, stub: str, delivery_id: int, n: int
) -> mta.GetOutcomesResponse:
    """Every message has one final status; live KPIs = ComputeStats = the stub's record."""
    assert count(database_url, "SELECT count(*) FROM sending_logs") == n
    assert count(database_url, "SELECT count(*) FROM sending_logs WHERE status NOT IN (3, 4)") == 0
    outcome: mta.GetOutcomesResponse = call_mta(
        stub, "GetOutcomes", mta.GetOutcomesRequest(delivery_id=delivery_id)
    )
    assert outcome.accepted == n, "each message id accepted once by the MTA, none lost"
    kpis = call(service, "GetKpis", pb.GetKpisRequest(delivery_id=delivery_id)).kpis
    stats = call(service, "ComputeStats", pb.ComputeStatsRequest(delivery_id=delivery_id))
    assert stats.repaired_counters == 0
    for name in ("to_deliver", "sent", "delivered", "failed", "pending", "opened", "clicked"):
        assert getattr(kpis, name) == getattr(stats.kpis, name), name
    assert kpis.final and kpis.to_deliver == n and kpis.sent == n
    assert kpis.delivered == outcome.delivered
    assert kpis.failed == outcome.hard_bounced + outcome.expired
    assert outcome.delivered + outcome.hard_bounced + outcome.expired == n
    assert (kpis.opened, kpis.clicked) == (outcome.opened, outcome.clicked)
    # Each event applied once: as many outcome events as the stub's record says.
    assert count(database_url, "SELECT count(*) FROM feedback_events WHERE kind = 1") == (
        outcome.delivered
    )
    assert_addresses_exact(database_url, outcome)
    return outcome


def assert_addresses_exact(database_url: str, outcome: mta.GetOutcomesResponse) -> None:
    """The address table against the stub's record (one message per address): each
    feedback event changed its address once, none missed, none twice."""

    def addresses(where: str) -> int:
        return count(database_url, f"SELECT count(*) FROM addresses WHERE {where}")

    def events(where: str) -> int:
        return count(database_url, f"SELECT count(*) FROM address_events WHERE {where}")

    # Signals (domain.quarantine.Signal): 1 delivered, 2 soft error, 3 hard error.
    assert events("signal = 3") == outcome.hard_bounced
    assert addresses("status = 3") == outcome.hard_bounced
    assert events("signal = 1") == outcome.delivered
    # A message's soft bounces fall within one significant error interval (a day): its
    # address counts one error, whatever the retries and resends.
    assert (
        count(database_url, "SELECT count(DISTINCT address) FROM address_events WHERE signal = 2")
        == outcome.soft_bounced
    )
    assert events("signal = 2 AND after IS NOT NULL") == outcome.soft_bounced
    assert addresses("status = 2 AND error_count <> 1") == 0
    assert addresses("status = 4") == 0
