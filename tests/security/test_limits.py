"""Bounded resources at the transport, as an abusive or broken peer meets them: receive
limits sized to the largest legitimate request, the caps on calls and streams, the
keepalive policy (a client within it is never told too_many_pings, one beyond it is),
and a frozen client dropped within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc

from delivery_service import validation
from delivery_service.mta import link
from grpc_common import serving
from mta_stub import server as stub_server
from tests.integration.conftest import Pair
from tests.support.callers import interceptors
from tests.support.processes import ServerProcess, StartMtaStub, wait_until
from tools.processes import REPO_ROOT, child_env

M = TypeVar("M", bound=Message)

# A character of 4 bytes in UTF-8, the most a character takes.
WIDE = "\U0001d11e"
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def address(i: int) -> str:
    """A distinct address of the longest length, 254 characters."""
    local = f"u{i:06d}"
    domain = "@example.com"
    return local + "x" * (254 - len(local) - len(domain)) + domain


def largest_content() -> pb.Content:
    """Content at every limit, in 4-byte characters."""
    link_text = "https://example.com/" + WIDE * (validation.MAX_LINK - 20)
    return pb.Content(
        subject=WIDE * validation.MAX_SUBJECT,
        body=WIDE * validation.MAX_BODY,
        links=[link_text] * validation.MAX_LINKS,
    )


def largest_create_delivery() -> pb.CreateDeliveryRequest:
    """The largest CreateDelivery the checks accept (validation.MAX_REQUEST_BYTES)."""
    recipients = [pb.Recipient(email=address(i)) for i in range(validation.MAX_RECIPIENTS)]
    return pb.CreateDeliveryRequest(
        label=WIDE * validation.MAX_LABEL,
        content=largest_content(),
        target=pb.Target(recipients=pb.RecipientList(recipients=recipients)),
        validity_period=duration_pb2.Duration(seconds=30 * 86400),
        feedback_mode=pb.FEEDBACK_MODE_EFS,
        required_approvals=[pb.APPROVAL_STEP_TARGET, pb.APPROVAL_STEP_CONTENT],
        request_id=WIDE * validation.MAX_ID,
    )


def largest_upsert_profiles() -> pb.UpsertProfilesRequest:
    profiles = [
        pb.Profile(
            profile_id=f"{i:06d}".ljust(validation.MAX_ID, "p"),
            email=address(i),
            quarantined=True,
            segments=[f"{j:02d}".ljust(validation.MAX_SEGMENT, "s") for j in range(20)],
        )
        for i in range(validation.MAX_PROFILES)
    ]
    return pb.UpsertProfilesRequest(profiles=profiles)


def relay_batch(messages: int, content: pb.Content, body: str | None = None) -> mta.ExchangeRequest:
    expire = timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600)
    batch = mta.RelayBatch(
        seq=1,
        delivery_id=1,
        content=mta.Content(
            subject=content.subject,
            body=content.body if body is None else body,
            links=list(content.links),
        ),
        expire_time=expire,
        messages=[mta.Message(message_id=i + 1, email=address(i)) for i in range(messages)],
    )
    return mta.ExchangeRequest(relay=batch)


def sized(build: Callable[[int], M], size: int) -> M:
    """build(n), n bytes of padding, with n such that the message is `size` bytes."""
    n = size - build(0).ByteSize()
    for _ in range(5):  # a length prefix may grow by a byte as the padding does
        message = build(n)
        if message.ByteSize() == size:
            return message
        n -= message.ByteSize() - size
    raise AssertionError(f"no padding makes {size} bytes")


# --- receive limits ----------------------------------------------------------------------


def test_the_limits_are_just_over_the_largest_legitimate_requests() -> None:
    create = largest_create_delivery().ByteSize()
    upsert = largest_upsert_profiles().ByteSize()
    relay = relay_batch(stub_server.MAX_RELAY_MESSAGES, largest_content()).ByteSize()
    # The arithmetic in the comments holds: each bound is over the real size.
    assert create <= 31_019_525 and upsert == 25_050_000 and relay <= 7_717_854
    assert max(create, upsert) < validation.MAX_REQUEST_BYTES < 1.1 * create
    assert relay < stub_server.MAX_REQUEST_BYTES < 1.1 * relay
    # The link sends what the stub takes, and a relay batch of the service's fits.
    assert link.MAX_RELAY_BYTES == stub_server.MAX_REQUEST_BYTES


async def call_code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    code: grpc.StatusCode = failed.value.code()
    return code


async def test_the_delivery_service_takes_its_largest_request_and_not_a_byte_more(
    pair: Pair,
) -> None:
    def build(n: int) -> pb.CreateDeliveryRequest:
        request = pb.CreateDeliveryRequest()
        request.CopyFrom(flows_request())
        request.content.body = "a" * n
        return request

    limit = validation.MAX_REQUEST_BYTES
    # At the limit the request is read, and then refused by the checks (its body is long).
    at_limit = sized(build, limit)
    assert await call_code(pair.api.CreateDelivery(at_limit, timeout=120)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    over = sized(build, limit + 1)
    assert await call_code(pair.api.CreateDelivery(over, timeout=120)) == RESOURCE_EXHAUSTED
    largest = largest_create_delivery()
    # The answer carries the content back: more than gRPC's default 4 MiB a client takes.
    async with grpc.aio.insecure_channel(
        pair.service.address,
        options=[("grpc.max_receive_message_length", serving.MAX_SEND_BYTES)],
        interceptors=interceptors(pair.caller),
    ) as channel:
        api = pb_grpc.DeliveryServiceStub(channel)
        created = await api.CreateDelivery(largest, timeout=300)
    assert created.delivery.label == largest.label
    assert pair.sql("SELECT count(*) FROM deliveries") == [(1,)]


def flows_request() -> pb.CreateDeliveryRequest:
    return pb.CreateDeliveryRequest(
        label="limits",
        content=pb.Content(subject="s", body="b"),
        target=pb.Target(recipients=pb.RecipientList(recipients=[pb.Recipient(email=address(0))])),
        validity_period=duration_pb2.Duration(seconds=60),
        feedback_mode=pb.FEEDBACK_MODE_EFS,
    )


@contextlib.asynccontextmanager
async def exchange(process: ServerProcess, client_id: str) -> AsyncIterator[Any]:
    """An Exchange stream to the stub, hello sent."""
    async with process.aio_channel() as channel:
        call = mta_grpc.MtaServiceStub(channel).Exchange()
        await call.write(mta.ExchangeRequest(hello=mta.Hello(client_id=client_id)))
        try:
            yield call
        finally:
            call.cancel()


async def relay_ack(call: Any) -> mta.RelayAck:
    while True:
        response = await asyncio.wait_for(call.read(), 60)
        assert response is not grpc.aio.EOF
        if response.HasField("relay_ack"):
            ack: mta.RelayAck = response.relay_ack
            return ack


async def test_the_stub_takes_its_largest_relay_batch_and_not_a_byte_more(
    start_mta_stub: StartMtaStub,
) -> None:
    stub = start_mta_stub()
    content = largest_content()
    largest = relay_batch(stub_server.MAX_RELAY_MESSAGES, content)
    async with exchange(stub, "limits") as call:
        await call.write(largest)
        ack = await relay_ack(call)
        assert (ack.accepted, ack.duplicates) == (stub_server.MAX_RELAY_MESSAGES, 0)

    limit = stub_server.MAX_REQUEST_BYTES
    at_limit = sized(lambda n: relay_batch(1, content, "a" * n), limit)
    async with exchange(stub, "limits") as call:
        await call.write(at_limit)
        assert (await relay_ack(call)).duplicates == 1
    over = sized(lambda n: relay_batch(1, content, "a" * n), limit + 1)
    async with exchange(stub, "limits") as call:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.write(over)
        # Generous: beside the suite's other processes, 4 MiB each way can take a while.
        assert await asyncio.wait_for(call.code(), 120) == RESOURCE_EXHAUSTED


# --- caps on calls and streams ---------------------------------------------------------


async def watch(channel: grpc.aio.Channel) -> Any:
    """A Health Watch stream, once its first answer is in: an open stream on the server."""
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    await asyncio.wait_for(call.read(), 10)
    return call


async def check(channel: grpc.aio.Channel) -> None:
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)


async def test_streams_beyond_the_cap_are_refused(start_mta_stub: StartMtaStub) -> None:
    stub = start_mta_stub("--max-streams", "2", "--max-concurrent-rpcs", "10")
    async with stub.aio_channel() as channel:
        first, _second = await watch(channel), await watch(channel)
        third = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(third.read(), 10)
        assert refused.value.code() == RESOURCE_EXHAUSTED
        assert "2 streams open" in (refused.value.details() or "")
        # Unary calls still go through, and a stream's end frees its place.
        await check(channel)
        first.cancel()

        async def reopened() -> bool:
            try:
                (await watch(channel)).cancel()
            except grpc.aio.AioRpcError as err:
                assert err.code() == RESOURCE_EXHAUSTED
                return False
            return True

        await await_until_true(reopened, 10)


async def test_calls_beyond_the_cap_are_refused(start_mta_stub: StartMtaStub) -> None:
    stub = start_mta_stub("--max-streams", "2", "--max-concurrent-rpcs", "2")
    async with stub.aio_channel() as channel:
        streams = [await watch(channel), await watch(channel)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check(channel)
        assert refused.value.code() == RESOURCE_EXHAUSTED
        for stream in streams:
            stream.cancel()


async def await_until_true(predicate: Callable[[], Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"not true within {timeout} s"
        await asyncio.sleep(0.05)


# --- keepalive ---------------------------------------------------------------------------


def test_our_clients_ping_no_faster_than_the_servers_allow() -> None:
    options = dict(serving.CLIENT_KEEPALIVE_OPTIONS)
    assert options["grpc.keepalive_time_ms"] >= serving.MIN_CLIENT_PING_INTERVAL_MS
    server = dict(serving.KEEPALIVE_OPTIONS)
    assert server["grpc.http2.min_ping_interval_without_data_ms"] == (
        serving.MIN_CLIENT_PING_INTERVAL_MS
    )
    # A dead peer is noticed within seconds on both ends.
    assert serving.KEEPALIVE_TIME_MS + serving.KEEPALIVE_TIMEOUT_MS <= 10_000


async def test_the_links_pings_are_never_too_many_and_faster_ones_are(
    start_mta_stub: StartMtaStub,
) -> None:
    """An idle stream with the link's keepalive survives three pings (a client gets two
    strikes), while a client that pings every second is closed with too_many_pings."""
    stub = start_mta_stub()
    fast = [("grpc.keepalive_time_ms", 1000), ("grpc.http2.max_pings_without_data", 0)]
    async with (
        stub.aio_channel(serving.CLIENT_KEEPALIVE_OPTIONS) as polite_channel,
        stub.aio_channel(fast) as rude_channel,
    ):
        polite, rude = await watch(polite_channel), await watch(rude_channel)
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            await asyncio.wait_for(rude.read(), 20)
        assert closed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "too many pings" in (closed.value.details() or "").lower()
        three_pings = 3 * dict(serving.CLIENT_KEEPALIVE_OPTIONS)["grpc.keepalive_time_ms"]
        # Nothing comes on the polite stream until the deadline: it is still open.
        reading = asyncio.ensure_future(polite.read())
        done, _ = await asyncio.wait({reading}, timeout=three_pings / 1000 + 3)
        assert not done and not polite.done()
        polite.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reading


# --- a frozen client ---------------------------------------------------------------------

FROZEN_CLIENT = """
import asyncio, sys, time
import grpc
from google.protobuf import timestamp_pb2
from mta.v1 import mta_service_pb2 as mta, mta_service_pb2_grpc as mta_grpc

async def main():
    async with grpc.aio.insecure_channel(sys.argv[1]) as channel:
        call = mta_grpc.MtaServiceStub(channel).Exchange()
        await call.write(mta.ExchangeRequest(hello=mta.Hello(client_id="frozen")))
        expire = timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600)
        batch = mta.RelayBatch(
            seq=1, delivery_id=1, expire_time=expire,
            content=mta.Content(subject="s", body="b"),
            messages=[mta.Message(message_id=1, email="ann@example.com")],
        )
        await call.write(mta.ExchangeRequest(relay=batch))
        while True:
            response = await call.read()
            if response.HasField("feedback"):
                ids = " ".join(e.event_id for e in response.feedback.events)
                print("feedback", ids, flush=True)
                break
        await asyncio.Event().wait()  # holds the stream, acknowledging nothing

asyncio.run(main())
"""


@contextlib.contextmanager
def frozen_client(stub_address: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """A client process holding an Exchange stream with feedback it never acknowledges;
    yields it and the event ids it got. Killed afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-c", FROZEN_CLIENT, stub_address],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        line = lines.get(timeout=30)
        assert line.startswith("feedback "), line
        yield process, line.split()[1:]
    finally:
        process.kill()
        process.wait(10)
        reader.join(10)
        stdout.close()


def exchange_lines(log: Path) -> list[str]:
    return [
        line
        for line in log.read_text(encoding="utf-8").splitlines()
        if "rpc /mta.v1.MtaService/Exchange " in line
    ]


async def test_a_frozen_client_is_dropped_within_seconds_and_its_feedback_sent_again(
    start_mta_stub: StartMtaStub,
) -> None:
    stub = start_mta_stub("--engagement-delay-ms", "50")
    assert stub.log_path is not None
    log = stub.log_path
    with frozen_client(stub.address) as (client, event_ids):
        assert exchange_lines(log) == []
        client.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        # The stub's keepalive ping goes unanswered: the stream ends, with its log line.
        wait_until(lambda: exchange_lines(log), 15, interval=0.1, message="stream still open")
        took = time.monotonic() - frozen_at
        limit = (serving.KEEPALIVE_TIME_MS + serving.KEEPALIVE_TIMEOUT_MS) / 1000 + 2
        assert took <= limit, f"the frozen client was dropped after {took:.1f} s"
        (ended,) = exchange_lines(log)
        # A dead peer's stream ends, to grpc, either as a cancel or as its requests
        # simply ending (an EOF no different from a half-close: grpc says not
        # cancelled even once the call is done); either way not as an error.
        assert " CANCELLED " in ended or " OK " in ended, ended
    # What it never acknowledged comes again to the client's next stream.
    async with exchange(stub, "frozen") as call:
        again: set[str] = set()
        while not set(event_ids) <= again:
            response = await asyncio.wait_for(call.read(), 30)
            assert response is not grpc.aio.EOF
            if response.HasField("feedback"):
                again |= {e.event_id for e in response.feedback.events}
