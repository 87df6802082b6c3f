"""Health, server reflection and metrics, as any gRPC tool or Prometheus sees them."""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Callable

import grpc
from delivery.v1 import delivery_service_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.integration import flows
from tests.integration.conftest import Pair, open_pair
from tests.support.processes import ServerProcess


def listed_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return {s.name for s in response.list_services_response.service}


def test_health_and_reflection(
    start_mta_stub: Callable[..., ServerProcess],
    start_delivery_service: Callable[..., ServerProcess],
    fresh_db_url: str,
) -> None:
    stub = start_mta_stub()
    service = start_delivery_service(fresh_db_url, stub.address)
    for process, name in ((service, "delivery.v1.DeliveryService"), (stub, "mta.v1.MtaService")):
        with grpc.insecure_channel(process.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for asked in ("", name):
                got = health.Check(health_pb2.HealthCheckRequest(service=asked), timeout=10)
                assert got.status == health_pb2.HealthCheckResponse.SERVING
        assert {name, "grpc.health.v1.Health"} <= listed_services(process.address)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def test_metrics_move_after_a_delivery(
    start_mta_stub: Callable[..., ServerProcess],
    start_delivery_service: Callable[..., ServerProcess],
    fresh_db_url: str,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stub = start_mta_stub()
    service = start_delivery_service(fresh_db_url, stub.address, "--metrics-port", str(port))

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body: bytes = r.read()
        return body.decode()

    before = scrape()
    pair: Pair
    async for pair in open_pair(service, stub, fresh_db_url):
        emails = [f"u{i}@example.com" for i in range(40)] + ["hard-refused@example.com"]
        delivery = await flows.send(pair, flows.request(emails))
        await flows.wait_relayed(pair, delivery.id)
        (log,) = [x for x in await flows.logs(pair, delivery.id) if x.email.startswith("hard")]
        await flows.wait_event(pair, log.message_id, flows.HARD_BOUNCE)
        await pair.api.GetKpis(pb.GetKpisRequest(delivery_id=delivery.id))
    after = scrape()
    assert (
        metric(after, "delivery_messages_relayed_total")
        - metric(before, "delivery_messages_relayed_total")
        == 41
    )
    assert metric(after, "delivery_feedback_events_applied_total") >= 41
    assert (
        metric(after, "grpc_server_handled_total", grpc_method="ConfirmSend", grpc_code="OK") == 1
    )
    assert metric(after, "grpc_server_started_total", grpc_method="GetKpis") >= 1
    assert metric(after, "grpc_server_handling_seconds_count", grpc_method="CreateDelivery") == 1
    assert metric(after, "delivery_batch_size_count", direction="relay") >= 1
    assert metric(after, "delivery_db_pool_connections", state="size") >= 1
