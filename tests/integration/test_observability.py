"""Health, server reflection and metrics, as any gRPC tool or Prometheus sees them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from delivery.v1 import delivery_service_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mta.v1 import mta_service_pb2 as mta

from tests.integration import flows
from tests.integration.conftest import Pair, open_pair
from tests.support.processes import ServerProcess, await_until

WAIT = 60.0


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        body: bytes = r.read()
    return body.decode()


async def test_metrics_move_after_a_delivery(
    start_mta_stub: Callable[..., ServerProcess],
    start_delivery_service: Callable[..., ServerProcess],
    fresh_db_url: str,
) -> None:
    port = free_port()
    stub = start_mta_stub()
    service = start_delivery_service(fresh_db_url, stub.address, "--metrics-port", str(port))
    before = scrape(port)
    pair: Pair
    async for pair in open_pair(service, stub, fresh_db_url):
        emails = [f"u{i}@example.com" for i in range(40)] + ["hard-refused@example.com"]
        delivery = await flows.send(pair, flows.request(emails))
        await flows.wait_relayed(pair, delivery.id)
        (log,) = [x for x in await flows.logs(pair, delivery.id) if x.email.startswith("hard")]
        await flows.wait_event(pair, log.message_id, flows.HARD_BOUNCE)
        await pair.api.GetKpis(pb.GetKpisRequest(delivery_id=delivery.id))

        # Each message's fate is applied by one of several appliers: all of them, then.
        async def all_applied() -> bool:
            return metric(scrape(port), "delivery_feedback_events_applied_total") >= 41

        await await_until(all_applied, flows.TIMEOUT, message="41 feedback events applied")
    after = scrape(port)
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


def handled(text: str) -> Counter[tuple[str, str]]:
    """grpc_server_handled_total by (method, code), from a scrape."""
    counts: Counter[tuple[str, str]] = Counter()
    for match in re.finditer(r"^grpc_server_handled_total\{(.*)\} (\S+)$", text, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        method = f"/{labels['grpc_service']}/{labels['grpc_method']}"
        counts[method, labels["grpc_code"]] += int(float(match.group(2)))
    return +counts  # without the zeros


def rpc_lines(log_path: Path | None) -> list[dict[str, Any]]:
    """The JSON log lines of the stub's RPCs (anything else in its log is skipped)."""
    assert log_path is not None
    lines = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue  # say, gRPC's own output
        record = json.loads(line)
        if record["logger"] == "mta_stub.rpc":
            lines.append(record)
    return lines


async def deliver_and_wait_for_feedback(pair: Pair) -> None:
    """41 messages, one a hard bounce; returns once the service holds feedback for each."""
    emails = [f"u{i}@example.com" for i in range(40)] + ["hard-refused@example.com"]
    delivery = await flows.send(pair, flows.request(emails))
    await flows.wait_relayed(pair, delivery.id)
    ids = [x.message_id for x in await flows.logs(pair, delivery.id)]

    async def every_message_reported() -> bool:
        rows = pair.sql(
            "SELECT count(DISTINCT message_id) FROM feedback_events WHERE message_id = ANY(%s)",
            ids,
        )
        return bool(rows[0][0] == len(emails))

    await await_until(every_message_reported, WAIT, message="feedback for every message")


async def test_stub_metrics_and_rpc_log_lines(
    start_mta_stub: Callable[..., ServerProcess],
    start_delivery_service: Callable[..., ServerProcess],
    fresh_db_url: str,
) -> None:
    port = free_port()
    stub = start_mta_stub("--metrics-port", str(port), "--log-json")
    service = start_delivery_service(fresh_db_url, stub.address)

    async def stub_metrics() -> str:
        return await asyncio.to_thread(scrape, port)

    before = await stub_metrics()
    assert metric(before, "mta_stub_relayed_messages_total", result="accepted") == 0
    pair: Pair
    async for pair in open_pair(service, stub, fresh_db_url):
        # A request id given by the caller is logged and comes back in the trailers.
        call = pair.mta.SetScenario(
            mta.SetScenarioRequest(), metadata=[("x-request-id", "obs-set")], timeout=10
        )
        await call
        assert ("x-request-id", "obs-set") in tuple(await call.trailing_metadata())
        bad = mta.SetScenarioRequest(mix=mta.Mix(hard_bounce_rate=2.0))
        try:
            await pair.mta.SetScenario(bad, metadata=[("x-request-id", "obs-bad")], timeout=10)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:
            raise AssertionError("a hard bounce rate of 2 was accepted")

        await deliver_and_wait_for_feedback(pair)

        async def stub_counted() -> str:
            text = await stub_metrics()
            acks = metric(text, "mta_stub_feedback_acks_received_total")
            return text if acks >= 1 else ""

        during = await await_until(stub_counted, WAIT, message="a feedback ack counted")
        assert metric(during, "mta_stub_relayed_messages_total", result="accepted") == 41
        assert metric(during, "mta_stub_relayed_messages_total", result="duplicate") == 0
        # At least one event per message: delivered, or the hard bounce.
        assert metric(during, "mta_stub_feedback_events_sent_total") >= 41
        assert metric(during, "mta_stub_feedback_batches_sent_total") >= 1
        assert metric(during, "mta_stub_open_streams") == 1
        started = metric(during, "grpc_server_started_total", grpc_method="Exchange")
        assert started >= 1
        counts = handled(during)
        assert counts["/mta.v1.MtaService/SetScenario", "OK"] == 1
        assert counts["/mta.v1.MtaService/SetScenario", "INVALID_ARGUMENT"] == 1
        assert metric(during, "grpc_server_handling_seconds_count", grpc_method="SetScenario") == 2
        # Each message of the Exchange stream: relay batches and acks in, feedback out.
        acks = metric(during, "mta_stub_feedback_acks_received_total")
        exchange = {"grpc_method": "Exchange", "grpc_type": "bidi_stream"}
        assert metric(during, "grpc_server_msg_received_total", **exchange) >= acks + 1
        assert metric(during, "grpc_server_msg_sent_total", **exchange) >= metric(
            during, "mta_stub_feedback_batches_sent_total"
        )

    # The delivery service's stream ends when it stops: the stub counts and logs it then.
    assert service.terminate(timeout=20) == 0

    async def stream_ended() -> str:
        text = await stub_metrics()
        ended = sum(n for (m, _), n in handled(text).items() if m.endswith("/Exchange"))
        return text if ended >= started and metric(text, "mta_stub_open_streams") == 0 else ""

    await await_until(stream_ended, WAIT, message="the Exchange stream counted as ended")

    # One log line per RPC: the lines match the handled counter, method and code alike.
    # (The counter moves just before the line is written: waited for, not assumed.)
    async def logged_as_counted() -> list[dict[str, Any]]:
        lines = rpc_lines(stub.log_path)
        counts = handled(await stub_metrics())
        logged = Counter((line["method"], line["code"]) for line in lines)
        return lines if logged == counts else []

    lines = await await_until(
        logged_as_counted, WAIT, message=lambda: f"log lines and counters differ: {stub.log_path}"
    )
    assert any(line["method"] == "/mta.v1.MtaService/Exchange" for line in lines)
    for line in lines:
        assert line["duration_ms"] >= 0
        assert line["request_id"] not in ("", "-")
        assert line["message"].startswith(f"rpc {line['method']} {line['code']} ")
    by_id = {line["request_id"]: line for line in lines}
    assert by_id["obs-set"]["method"] == "/mta.v1.MtaService/SetScenario"
    assert by_id["obs-set"]["code"] == "OK"
    assert by_id["obs-bad"]["code"] == "INVALID_ARGUMENT"
    assert by_id["obs-bad"]["details"]
    assert by_id["obs-bad"]["message"].endswith(f"ms: {by_id['obs-bad']['details']}")
    assert "details" not in by_id["obs-set"]
    assert sum(line["request_id"] in ("obs-set", "obs-bad") for line in lines) == 2
    # Every line is JSON in JSON mode, the listening line on stdout included.
    every = json_lines(stub.log_path)
    assert all(RFC3339.fullmatch(line["time"]) for line in every)
    assert f"listening on {stub.address}" in [line["message"] for line in every]


# RFC 3339 in UTC to the millisecond, as both servers write a log line's time.
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def json_lines(log_path: Path | None) -> list[dict[str, Any]]:
    """Every line of a server's log (stdout and stderr), each of which must be JSON."""
    assert log_path is not None
    lines = log_path.read_text(encoding="utf-8").splitlines()
    assert lines, f"empty log: {log_path}"
    return [json.loads(line) for line in lines]


async def watch_then_cancel(address: str, service: str) -> None:
    """A health Watch that gets its first answer, then is cancelled by its client."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service),
            metadata=[("x-request-id", "watch-cancelled")],
        )
        first = await asyncio.wait_for(call.read(), WAIT)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        call.cancel()


async def test_log_lines_rpc_details_cancellations_and_message_counters(
    start_mta_stub: Callable[..., ServerProcess],
    start_delivery_service: Callable[..., ServerProcess],
    fresh_db_url: str,
) -> None:
    """The service in JSON mode, the stub in text mode: every line of the service's log is
    JSON (the listening line too), every line of both has an RFC 3339 time; a refused
    call's line carries its status message; a client's cancel is CANCELLED at INFO on both;
    grpc_server_msg_* count a stream's messages and a unary call's."""
    stub_port, service_port = free_port(), free_port()
    stub = start_mta_stub("--metrics-port", str(stub_port))
    service = start_delivery_service(
        fresh_db_url, stub.address, "--log-json", "--metrics-port", str(service_port)
    )
    bad = flows.request(["a@example.com"])
    bad.label = ""
    bad.content.links.append("javascript:alert(1)")
    bad.ClearField("validity_period")
    pair: Pair
    async for pair in open_pair(service, stub, fresh_db_url):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await pair.api.CreateDelivery(bad, metadata=[("x-request-id", "bad-create")])
    await watch_then_cancel(service.address, "delivery.v1.DeliveryService")
    await watch_then_cancel(stub.address, "mta.v1.MtaService")

    def service_line(request_id: str) -> list[dict[str, Any]]:
        return [
            line
            for line in json_lines(service.log_path)
            if line["request_id"] == request_id and "code" in line
        ]

    (refused,) = await await_until(
        lambda: asyncio.to_thread(service_line, "bad-create"), WAIT, message="the refused call"
    )
    details = (
        "content.links[1]: must be an http or https URL"
        " (and 2 more invalid fields: label, validity_period)"
    )
    assert (refused["code"], refused["level"], refused["details"]) == (
        "INVALID_ARGUMENT",
        "INFO",
        details,
    )
    assert refused["message"].endswith(f"ms: {details}")
    (cancelled,) = await await_until(
        lambda: asyncio.to_thread(service_line, "watch-cancelled"), WAIT, message="the cancel"
    )
    assert (cancelled["method"], cancelled["code"], cancelled["level"]) == (
        "/grpc.health.v1.Health/Watch",
        "CANCELLED",
        "INFO",
    )
    assert "details" not in cancelled

    lines = await asyncio.to_thread(json_lines, service.log_path)
    assert all(RFC3339.fullmatch(line["time"]) for line in lines)
    listening = [line for line in lines if line["message"].startswith("listening on ")]
    assert [line["message"] for line in listening] == [f"listening on {service.address}"]

    # The stub's text lines: time, level, logger, [request id], message.
    assert stub.log_path is not None

    def stub_cancel_line() -> list[str]:
        text = stub.log_path.read_text(encoding="utf-8") if stub.log_path else ""
        return [line for line in text.splitlines() if "[watch-cancelled]" in line]

    (stub_cancelled,) = await await_until(
        lambda: asyncio.to_thread(stub_cancel_line), WAIT, message="the stub's cancel line"
    )
    time, level, logger, rid, message = stub_cancelled.split(" ", 4)
    assert RFC3339.fullmatch(time)
    assert (level, logger, rid) == ("INFO", "mta_stub.rpc", "[watch-cancelled]")
    assert re.fullmatch(r"rpc /grpc\.health\.v1\.Health/Watch CANCELLED \d+\.\dms", message)
    for line in stub.log_path.read_text(encoding="utf-8").splitlines():
        assert line.startswith("listening on ") or RFC3339.fullmatch(line.split(" ")[0]), line

    watch = {"grpc_method": "Watch", "grpc_type": "server_stream"}
    for port, name in ((service_port, "delivery.v1.DeliveryService"), (stub_port, "")):
        # The answer the watch sent is counted once its write returns, which on a loaded
        # machine may be after the test read it.
        async def sent(port: int = port) -> bool:
            text = await asyncio.to_thread(scrape, port)
            return metric(text, "grpc_server_msg_sent_total", **watch) >= 1

        await await_until(sent, WAIT, message="the watch's answer counted")
        text = await asyncio.to_thread(scrape, port)
        assert metric(text, "grpc_server_msg_received_total", **watch) == 1
        # Health checks while the server came up: one request and one answer each.
        check = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
        checks = metric(text, "grpc_server_handled_total", **check)
        assert checks >= 1
        assert metric(text, "grpc_server_msg_received_total", **check) == checks
        assert metric(text, "grpc_server_msg_sent_total", **check) == checks
        if name:
            create = {"grpc_method": "CreateDelivery", "grpc_type": "unary"}
            assert metric(text, "grpc_server_msg_received_total", **create) == 1
            assert metric(text, "grpc_server_msg_sent_total", **create) == 0
