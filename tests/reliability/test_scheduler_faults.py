"""The scheduler survives unexpected database errors: an error injected into every round
(a trigger raising on each change to a delivery, a fault no retry can avoid) is logged,
health says NOT_SERVING while the rounds keep failing, the rounds retry with a backoff,
and once the fault is gone the delivery finishes with exact figures and health is
SERVING again."""

from __future__ import annotations

import grpc
import psycopg
from delivery.v1 import delivery_service_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Servers
from tests.reliability import scenario
from tests.support.processes import wait_until

N = 200

FAULT = """
CREATE TABLE injected_fault (active boolean NOT NULL);
INSERT INTO injected_fault VALUES (false);
CREATE FUNCTION inject_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT active FROM injected_fault) THEN
        RAISE EXCEPTION 'injected fault' USING ERRCODE = 'XX000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER inject_fault BEFORE UPDATE ON deliveries
    FOR EACH ROW EXECUTE FUNCTION inject_fault();
"""


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="delivery.v1.DeliveryService"), timeout=5
        )
    status: int = response.status
    return status


def set_fault(database_url: str, active: bool) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE injected_fault SET active = %s", (active,))


def test_rounds_that_fail_are_logged_retried_and_reported_in_health(
    fresh_db_url: str, servers: Servers
) -> None:
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute(FAULT)
    stub = servers.mta_stub("--retry-interval-ms", "100", "--engagement-delay-ms", "50")
    service = servers.delivery_service(fresh_db_url, stub.address, "--tick", "0.05")
    delivery_id = scenario.start_delivery(fresh_db_url, service.address, stub.address, N, 3)
    wait_until(
        lambda: scenario.count(fresh_db_url, scenario.RELAYED) == N,
        60,
        message="every message relayed",
    )
    # From now on every round that finishes the delivery or refreshes its stats fails.
    set_fault(fresh_db_url, True)
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    wait_until(lambda: health(service.address) == not_serving, 60, message="NOT_SERVING")
    log = service.log_tail(400)
    assert "scheduler round failed" in log and "injected fault" in log
    got = scenario.call(
        service.address, "GetDelivery", pb.GetDeliveryRequest(delivery_id=delivery_id)
    )
    assert got.delivery.state != pb.STATE_FINISHED, "a failed finish leaves nothing done"
    set_fault(fresh_db_url, False)
    scenario.wait_finished(lambda: service.address, delivery_id, timeout=60)
    wait_until(
        lambda: health(service.address) == health_pb2.HealthCheckResponse.SERVING,
        60,
        message="SERVING again",
    )
    scenario.assert_exact(fresh_db_url, service.address, stub.address, delivery_id, N)
