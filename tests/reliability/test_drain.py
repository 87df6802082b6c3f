"""SIGTERM: health NOT_SERVING at once, in-flight work committed or handed back, a clean
exit within the grace period; a restarted service finishes the delivery with nothing lost."""

from __future__ import annotations

import signal
import time

import grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc

from tests.conftest import Servers
from tests.support import callers
from tests.support.callers import CALLER_ROLES, bearer
from tests.support.processes import create_operator, wait_until

N = 8000


def test_sigterm_drains_and_nothing_is_lost(fresh_db_url: str, servers: Servers) -> None:
    stub = servers.mta_stub("--retry-interval-ms", "100", "--engagement-delay-ms", "50")
    service = servers.delivery_service(fresh_db_url, stub.address, "--grace", "5")
    token = bearer(create_operator(fresh_db_url, "s", *CALLER_ROLES))
    with callers.channel(service.address, token) as channel:
        api = pb_grpc.DeliveryServiceStub(channel)
        created = api.CreateDelivery(
            pb.CreateDeliveryRequest(
                label="drain",
                content=pb.Content(subject="s", body="b"),
                target=pb.Target(
                    recipients=pb.RecipientList(
                        recipients=[pb.Recipient(email=f"u{i}@example.com") for i in range(N)]
                    )
                ),
                validity_period=duration_pb2.Duration(seconds=15),
                feedback_mode=pb.FEEDBACK_MODE_WITHOUT_EFS,
            ),
            timeout=60,
        )
        delivery_id = created.delivery.id
        api.PrepareDelivery(pb.PrepareDeliveryRequest(delivery_id=delivery_id), timeout=60)
        api.ConfirmSend(pb.ConfirmSendRequest(delivery_id=delivery_id), metadata=token)
        health = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert next(health).status == health_pb2.HealthCheckResponse.SERVING

        def relaying() -> bool:
            k = api.GetKpis(pb.GetKpisRequest(delivery_id=delivery_id), timeout=10).kpis
            return bool(k.sent > 0)

        wait_until(relaying, 60, message="relay under way")
        started = time.monotonic()
        service.send_signal(signal.SIGTERM)
        assert next(health).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert service.wait(10) == 0
        assert time.monotonic() - started < 10

    service = servers.delivery_service(fresh_db_url, stub.address)
    with callers.channel(service.address, token) as channel:
        api = pb_grpc.DeliveryServiceStub(channel)

        def finished() -> bool:
            got = api.GetDelivery(pb.GetDeliveryRequest(delivery_id=delivery_id), timeout=10)
            return bool(got.delivery.state == pb.STATE_FINISHED)

        wait_until(finished, 120, interval=0.25, message="delivery FINISHED after restart")
        kpis = api.GetKpis(pb.GetKpisRequest(delivery_id=delivery_id), timeout=10).kpis
    with grpc.insecure_channel(stub.address) as channel:
        outcome = mta_grpc.MtaServiceStub(channel).GetOutcomes(
            mta.GetOutcomesRequest(delivery_id=delivery_id), timeout=10
        )
    assert (outcome.accepted, kpis.sent, kpis.delivered) == (N, N, N)
