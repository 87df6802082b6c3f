"""TLS and mutual TLS, as a caller on the network meets them: a plaintext client, a client
whose certificate another CA signed, a delivery service without a client certificate, and
the whole pair over mutual TLS delivering with exact figures.

Certificates are throwaway ones (trustme, tests/support/tls.py), made for each test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from delivery.v1 import delivery_service_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from campaign_cli.app import app
from campaign_cli.client import credentials
from campaign_cli.errors import CliError
from tests.conftest import Servers
from tests.integration import flows
from tests.integration.conftest import Pair, open_pair
from tests.support.processes import ServerProcess, wait_until
from tests.support.tls import pair_tls, stranger
from tools.pair import PairTls
from tools.processes import ClientTls

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def certificates(tmp_path: Path) -> PairTls:
    return pair_tls(tmp_path / "tls")


@pytest.fixture
def tls_servers(
    request: pytest.FixtureRequest, tmp_path: Path, certificates: PairTls
) -> Iterator[Servers]:
    """Servers that serve mutual TLS, the link between them too; stopped after the test."""
    started = Servers(request, tmp_path / "logs")
    started.launcher = dataclasses.replace(started.launcher, tls=certificates)
    yield started
    started.stop_all()


def health(channel: grpc.Channel) -> int:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    status: int = response.status
    return status


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    """The code a health check on `channel` fails with."""
    with pytest.raises(grpc.RpcError) as failed:
        health(channel)
    code: grpc.StatusCode = failed.value.code()
    return code


def test_a_plaintext_client_to_a_tls_port_fails(
    tls_servers: Servers, fresh_db_url: str, certificates: PairTls
) -> None:
    pair = tls_servers.pair(fresh_db_url)
    for process in pair.processes:
        with grpc.insecure_channel(process.address) as plaintext:
            assert refused(plaintext) == grpc.StatusCode.UNAVAILABLE
        # The same port answers a client with the CA and a client certificate.
        with process.channel() as tls:
            assert health(tls) == SERVING


def test_the_stub_refuses_a_client_certificate_from_another_ca(
    tls_servers: Servers, certificates: PairTls, tmp_path: Path
) -> None:
    stub = tls_servers.mta_stub()
    rogue = stranger(tmp_path / "rogue", certificates)
    with grpc.secure_channel(stub.address, rogue.credentials()) as channel:
        assert refused(channel) == grpc.StatusCode.UNAVAILABLE
    # Trusting the stub is not enough either: a client must show a certificate.
    anonymous = ClientTls(certificates.ca)
    with grpc.secure_channel(stub.address, anonymous.credentials()) as channel:
        assert refused(channel) == grpc.StatusCode.UNAVAILABLE


def test_the_stub_refuses_a_delivery_service_without_a_client_certificate(
    tls_servers: Servers, fresh_db_url: str
) -> None:
    stub = tls_servers.mta_stub()
    # The service checks the stub's certificate but has none of its own to show.
    service = tls_servers.delivery_service(
        fresh_db_url, stub.address, "--mta-client-cert", "", "--mta-client-key", ""
    )
    assert service.log_path is not None and stub.log_path is not None
    log = service.log_path

    def link_refused() -> bool:
        lines = log.read_text(encoding="utf-8").splitlines()
        return any("MTA stream lost" in line and "UNAVAILABLE" in line for line in lines)

    wait_until(link_refused, 30, message=lambda: f"no refused link in\n{service.log_tail()}")
    assert "connected to the MTA" not in log.read_text(encoding="utf-8")
    assert "stream opened" not in stub.log_path.read_text(encoding="utf-8")


def tls_channel(process: ServerProcess, interceptors: list[Any]) -> grpc.aio.Channel:
    assert process.tls is not None
    return grpc.aio.secure_channel(
        process.address, process.tls.credentials(), interceptors=interceptors
    )


@pytest.fixture
async def tls_pair(fresh_db_url: str, tls_servers: Servers) -> AsyncIterator[Pair]:
    """The pair over mutual TLS (callers included), with its clients and operators."""
    processes = tls_servers.pair(
        fresh_db_url, ("--retry-interval-ms", "100", "--engagement-delay-ms", "50")
    )
    async for pair in open_pair(processes.service, processes.stub, fresh_db_url, tls_channel):
        yield pair


async def test_the_pair_delivers_over_mutual_tls_with_exact_kpis(tls_pair: Pair) -> None:
    emails = [
        "ann@example.com",
        "hard-user-unknown@example.com",
        "soft-1@example.com",
        "open@example.com",
        "click-0@example.com",
    ]
    request = flows.request(
        emails, validity_seconds=3, approvals=[pb.APPROVAL_STEP_TARGET, pb.APPROVAL_STEP_CONTENT]
    )
    delivery = await flows.send(tls_pair, request)
    finished = await flows.wait_state(tls_pair, delivery.id, pb.STATE_FINISHED)
    assert finished.to_deliver == 5
    kpis = await flows.kpis(tls_pair, delivery.id)
    assert kpis.final
    assert (kpis.to_deliver, kpis.sent, kpis.delivered, kpis.failed) == (5, 5, 4, 1)
    assert (kpis.opened, kpis.clicked) == (2, 1)
    assert (kpis.delivered_percent, kpis.bounces_percent) == (80.0, 20.0)
    assert (kpis.open_percent, kpis.click_percent) == (50.0, 25.0)
    # Nothing but mutual TLS reached the stub: the link went through it.
    assert tls_pair.stub_process.log_path is not None
    assert "stream opened" in tls_pair.stub_process.log_path.read_text(encoding="utf-8")


def campaign(*args: str) -> tuple[int, str]:
    """`campaign *args` in process: the exit code and what it printed."""
    env: dict[str, str | None] = {
        name: None
        for name in ("CAMPAIGN_ADDRESS", "CAMPAIGN_TOKEN", "CAMPAIGN_TLS_CA", "CAMPAIGN_INSECURE")
    }
    result = CliRunner(env=env).invoke(app, list(args), prog_name="campaign")
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.output


async def test_the_cli_talks_mutual_tls_with_a_ca_and_a_client_certificate(
    tls_pair: Pair, certificates: PairTls
) -> None:
    delivery = await flows.create_and_approve(tls_pair, flows.request(["ann@example.com"]))
    (_, token), *_ = tls_pair.caller
    address = tls_pair.service.address
    tls = ("--tls-ca", str(certificates.ca))
    client = (
        "--tls-cert",
        str(certificates.client_cert),
        "--tls-key",
        str(certificates.client_key),
    )
    code, out = campaign("--json", "--address", address, "--token", token.split()[1], *tls, *client,
                         "deliveries", "get", str(delivery.id))  # fmt: skip
    assert code == 0, out
    assert f'"id": "{delivery.id}"' in out or f'"id": {delivery.id}' in out
    # Without its client certificate, or in plaintext, it does not get through.
    for args in (tls, ()):
        code, out = campaign("--address", address, "--timeout", "5", *args, "kpis", "1")
        assert code == 1 and "UNAVAILABLE" in out, out


def test_the_cli_refuses_plaintext_beyond_loopback_unless_insecure() -> None:
    with pytest.raises(CliError, match="beyond this machine: give --tls-ca"):
        credentials("10.1.2.3:50051", None, None, None, insecure=False)
    assert credentials("10.1.2.3:50051", None, None, None, insecure=True) is None
    assert credentials("localhost:50051", None, None, None, insecure=False) is None
    with pytest.raises(CliError, match="go together"):
        credentials("localhost:50051", "ca.pem", "client.pem", None, insecure=False)
    with pytest.raises(CliError, match=r"cannot read /nonexistent/ca\.pem"):
        credentials("localhost:50051", "/nonexistent/ca.pem", None, None, insecure=False)
