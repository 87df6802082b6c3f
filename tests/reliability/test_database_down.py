"""The database goes away and comes back: callers get UNAVAILABLE well within their
deadline, health says NOT_SERVING while it is gone and SERVING soon after it is back, and
the first calls after its return work.

The test runs its own embedded server (whatever DATABASE_URL says), since it stops it.
"""

from __future__ import annotations

import time

import grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2

from tests.conftest import Servers
from tests.integration.test_health_port import free_port, status
from tests.reliability import scenario
from tests.support.own_postgres import own_postgres
from tests.support.processes import wait_until
from tools import embedded_pg

SERVICE = "delivery.v1.DeliveryService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The CLI's deadline: an outage must be told well within it.
DEADLINE = 30.0


def get_kpis(address: str, delivery_id: int) -> pb.GetKpisResponse:
    with grpc.insecure_channel(address) as channel:
        answer: pb.GetKpisResponse = pb_grpc.DeliveryServiceStub(channel).GetKpis(
            pb.GetKpisRequest(delivery_id=delivery_id), timeout=DEADLINE, metadata=scenario.caller
        )
    return answer


def unavailable_after(address: str, delivery_id: int) -> float:
    """How long GetKpis took to fail, as it must, with UNAVAILABLE."""
    start = time.monotonic()
    try:
        get_kpis(address, delivery_id)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        assert "the database is unreachable" in (err.details() or ""), err
    else:
        raise AssertionError("GetKpis answered without its database")
    return time.monotonic() - start


def test_database_down_then_back(servers: Servers) -> None:
    with own_postgres("down") as (data_dir, url):
        health_port = free_port()
        stub = servers.mta_stub()
        process = servers.delivery_service(url, stub.address, "--health-port", str(health_port))
        service = process.address
        delivery_id = scenario.start_delivery(url, service, stub.address, 10, 60)
        assert get_kpis(service, delivery_id).kpis.to_deliver == 10

        def health() -> set[int]:
            """The named service's status on the service's port and on the health port."""
            return {status(health_port, SERVICE), status(process.port, SERVICE)}

        embedded_pg.stop(data_dir)
        down = time.monotonic()
        first = unavailable_after(service, delivery_id)
        wait_until(lambda: health() == {NOT_SERVING}, 10, message="health still SERVING")
        not_serving = time.monotonic() - down
        # Once the service knows, callers are told at once.
        known = unavailable_after(service, delivery_id)
        # The process itself is alive: a liveness probe must not restart it for this.
        assert status(health_port, "") == SERVING

        embedded_pg.start(data_dir)
        back = time.monotonic()
        wait_until(
            lambda: get_kpis(service, delivery_id),
            10,
            ignore=(grpc.RpcError,),
            message="GetKpis still failing",
        )
        answered = time.monotonic() - back
        wait_until(lambda: health() == {SERVING}, 10, message="health still NOT_SERVING")
        serving = time.monotonic() - back
        print(
            f"\ndatabase down: UNAVAILABLE after {first:.2f} s (deadline {DEADLINE:g} s), "
            f"NOT_SERVING after {not_serving:.2f} s, then UNAVAILABLE after {known:.2f} s; "
            f"back: GetKpis answered after {answered:.2f} s, SERVING after {serving:.2f} s"
        )
        # Loosely: the pool waits 4 s, 0.5 s once the probe (every second when up, every
        # 0.25 s when down) found the database gone; the scheduler's health needs a round
        # (its backoff is up to 2 s).
        assert first < 8.0
        assert known < 3.0
        assert answered < 4.0
        assert serving < 6.0
