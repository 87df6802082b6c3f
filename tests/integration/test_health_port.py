"""The health-only port both servers can serve in plaintext, for probes that speak no TLS
(deploy/: the kubelet's gRPC probes): health answers there, and nothing else does."""

from __future__ import annotations

import socket

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc

from tests.conftest import Servers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def status(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    code: int = answer.status
    return code


def test_both_servers_answer_health_alone_on_their_health_port(
    fresh_db_url: str, servers: Servers
) -> None:
    stub_port, service_port = free_port(), free_port()
    stub = servers.mta_stub("--health-port", str(stub_port))
    servers.delivery_service(fresh_db_url, stub.address, "--health-port", str(service_port))
    serving = health_pb2.HealthCheckResponse.SERVING
    assert status(stub_port, "") == serving
    assert status(service_port, "") == serving
    assert status(service_port, "delivery.v1.DeliveryService") == serving
    with grpc.insecure_channel(f"127.0.0.1:{stub_port}") as channel:
        try:
            mta_grpc.MtaServiceStub(channel).GetOutcomes(mta.GetOutcomesRequest(), timeout=10)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED
        else:
            raise AssertionError("the health port served the MTA's RPCs")
