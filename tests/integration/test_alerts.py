"""Delivery alerts through the real pair (SPEC.md, "Failure breakdown and alerts"): the
service checks live deliveries every half second, for deliveries of 5 messages or more;
the stub's address patterns give each message its fate (`hard@` bounces at once,
`complaint@` complains after its delivery, `delay-<ms>@` is delivered that much later).

An alert is raised once per criterion and delivery per day, whatever the number of
rounds that see it crossed; it shows in GetKpis, in the deployment watch and in
ListAlerts. A hard-bounce ratio over --stop-hard-bounce-ratio stops a delivery that is
still being relayed: the link to the stub is slowed to a stop after the first relay
batch (Gate), so that the delivery is SENDING while that batch's bounces come back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import timestamp_pb2
from mta.v1 import mta_service_pb2 as mta

from tests.conftest import Servers
from tests.integration import flows
from tests.integration.conftest import Pair, open_pair
from tests.support.processes import await_until

INTERVAL = 0.5
MIN_MESSAGES = 5
SERVICE_ARGS = ("--alert-interval", str(INTERVAL), "--alert-min-messages", str(MIN_MESSAGES))
HARD = pb.ALERT_CRITERION_HARD_BOUNCE_RATIO
COMPLAINT = pb.ALERT_CRITERION_COMPLAINT_RATIO
NOTHING_RELAYED = pb.ALERT_CRITERION_NOTHING_RELAYED
# The relay's batch: the messages the MTA acknowledges at once (delivery_service.mta.relay).
RELAY_BATCH = 1000


async def start_pair(
    url: str, servers: Servers, *service_args: str, mta_address: str = ""
) -> AsyncIterator[Pair]:
    """The stub with its defaults, and the service checking alerts every half second;
    with `mta_address`, the service relays there (a Gate in front of the stub)."""
    stub = servers.mta_stub()
    service = servers.delivery_service(
        url, mta_address or stub.address, *SERVICE_ARGS, *service_args
    )
    async for p in open_pair(service, stub, url):
        yield p


@pytest.fixture
async def pair(fresh_db_url: str, servers: Servers) -> AsyncIterator[Pair]:
    async for p in start_pair(fresh_db_url, servers):
        yield p


# --- helpers --------------------------------------------------------------------------


async def list_alerts(pair: Pair, delivery_id: int = 0, page_size: int = 0) -> list[pb.Alert]:
    """Every page of ListAlerts: one delivery's alerts, or (0) all."""
    out: list[pb.Alert] = []
    token = ""
    while True:
        page = await pair.api.ListAlerts(
            pb.ListAlertsRequest(delivery_id=delivery_id, page_size=page_size, page_token=token),
            timeout=30,
        )
        out.extend(page.alerts)
        token = page.next_page_token
        if not token:
            return out


def stored(pair: Pair, delivery_id: int) -> list[tuple[int, bool]]:
    """(criterion, stopped) of each alert the database holds for the delivery."""
    return [
        (c, s)
        for c, s in pair.sql(
            "SELECT criterion, stopped FROM delivery_alerts WHERE delivery_id = %s"
            " ORDER BY criterion",
            delivery_id,
        )
    ]


async def wait_alert(
    pair: Pair, delivery_id: int, criterion: pb.AlertCriterion.ValueType, timeout: float = 60
) -> pb.Alert:
    async def raised() -> list[pb.Alert]:
        return [a for a in await list_alerts(pair, delivery_id) if a.criterion == criterion]

    def missing() -> str:
        return f"no alert {criterion} for delivery {delivery_id}: {stored(pair, delivery_id)}"

    (alert,) = await await_until(raised, timeout, interval=0.1, message=missing)
    return alert


async def rounds_pass(count: int) -> None:
    """Returns once `count` alert rounds' time has passed (a deadline, not a sleep)."""
    end = time.monotonic() + count * INTERVAL

    async def over() -> bool:
        return time.monotonic() >= end

    await await_until(over, count * INTERVAL + 10, interval=0.1)


async def state_of(pair: Pair, delivery_id: int) -> pb.State.ValueType:
    got = await pair.api.GetDelivery(pb.GetDeliveryRequest(delivery_id=delivery_id), timeout=30)
    return got.delivery.state


async def watched(pair: Pair, delivery_id: int) -> pb.WatchDeploymentResponse:
    """The deployment watch's first update."""
    call = pair.api.WatchDeployment(pb.WatchDeploymentRequest(delivery_id=delivery_id))
    try:
        update: pb.WatchDeploymentResponse = await call.read()
    finally:
        call.cancel()
    return update


def assert_same(a: pb.Alert, b: pb.Alert) -> None:
    assert (a.delivery_id, a.criterion, a.raise_time, a.value, a.threshold, a.message) == (
        b.delivery_id, b.criterion, b.raise_time, b.value, b.threshold, b.message,
    )  # fmt: skip
    assert a.stopped == b.stopped


# --- the criteria ---------------------------------------------------------------------


async def test_a_hard_bounce_ratio_over_5_percent_raises_one_alert_everywhere(
    pair: Pair,
) -> None:
    # 2 of 10 hard-bounce: 20 % of the messages sent, over 5 %.
    emails = ["hard+1@example.com", "hard+2@example.com"] + [
        f"ok+{i}@example.com" for i in range(8)
    ]
    delivery = await flows.send(pair, flows.request(emails))
    alert = await wait_alert(pair, delivery.id, HARD)
    assert alert.delivery_id == delivery.id
    # The ratio at the round that saw it: 1 or 2 bounces of what was relayed by then.
    assert 0.05 < alert.value <= 1.0
    assert alert.threshold == pytest.approx(0.05)
    assert alert.message == f"{alert.value:.1%} of the messages sent hard-bounced"
    assert alert.stopped is False
    assert alert.HasField("raise_time")
    raised = alert.raise_time.ToDatetime()
    assert abs(time.time() - raised.timestamp()) < 120  # now-ish (UTC)

    # Several rounds later, still the one alert (the delivery is live: SENT, its validity
    # runs 2 minutes), and still unchanged.
    await rounds_pass(6)
    assert (await flows.kpis(pair, delivery.id)).hard_failed == 2
    assert stored(pair, delivery.id) == [(HARD, False)]
    (again,) = await list_alerts(pair, delivery.id)
    assert_same(again, alert)

    # In GetKpis, in the watch, and in ListAlerts of every delivery.
    (in_kpis,) = (await flows.kpis(pair, delivery.id)).alerts
    assert_same(in_kpis, alert)
    (in_watch,) = (await watched(pair, delivery.id)).kpis.alerts
    assert_same(in_watch, alert)
    (in_all,) = await list_alerts(pair)
    assert_same(in_all, alert)
    # Nothing else crossed: no soft bounces, no complaints, relayed at once.
    assert [a.criterion for a in await list_alerts(pair, delivery.id)] == [HARD]


async def test_complaints_over_a_tenth_of_a_percent_raise_a_complaint_alert(
    pair: Pair,
) -> None:
    emails = ["complaint+1@example.com"] + [f"ok+{i}@example.com" for i in range(5)]
    delivery = await flows.send(pair, flows.request(emails))
    alert = await wait_alert(pair, delivery.id, COMPLAINT)
    # 1 complaint of the messages delivered by then (1 to 6).
    assert 1 / 6 - 1e-9 <= alert.value <= 1.0
    assert alert.threshold == pytest.approx(0.001)
    assert alert.message == f"{alert.value:.2%} of the messages delivered drew a complaint"
    assert alert.stopped is False
    await rounds_pass(4)
    assert stored(pair, delivery.id) == [(COMPLAINT, False)]
    k = await flows.kpis(pair, delivery.id)
    assert k.complaints == 1
    assert [a.criterion for a in k.alerts] == [COMPLAINT]
    assert [a.criterion for a in (await watched(pair, delivery.id)).kpis.alerts] == [COMPLAINT]


async def test_a_delivery_below_the_minimum_raises_none(pair: Pair) -> None:
    # 4 messages, every one a hard bounce: 100 %, but fewer than --alert-min-messages.
    small = await flows.send(pair, flows.request([f"hard+{i}@example.com" for i in range(4)]))
    await flows.wait_relayed(pair, small.id)

    async def bounced() -> bool:
        return (await flows.kpis(pair, small.id)).hard_failed == 4

    await await_until(bounced, 60, message="the 4 hard bounces never counted")
    # A delivery of 5 sent after it raises its alert: rounds ran while both were live.
    big = await flows.send(pair, flows.request([f"hard+{i}@other.example" for i in range(5)]))
    await wait_alert(pair, big.id, HARD)
    await rounds_pass(4)
    assert await state_of(pair, small.id) == pb.STATE_SENT
    assert await list_alerts(pair, small.id) == []
    assert stored(pair, small.id) == []
    assert list((await flows.kpis(pair, small.id)).alerts) == []
    assert [a.delivery_id for a in await list_alerts(pair)] == [big.id]


async def test_nothing_relayed_for_too_long_alerts(fresh_db_url: str, servers: Servers) -> None:
    """The stub is stopped before the send is confirmed: nothing is acknowledged, so
    nothing is relayed, and after --alert-nothing-relayed (1 s) the delivery alerts."""
    async for pair in start_pair(fresh_db_url, servers, "--alert-nothing-relayed", "1"):
        pair.stub_process.terminate()
        delivery = await flows.send(pair, flows.request([f"ok+{i}@example.com" for i in range(5)]))
        alert = await wait_alert(pair, delivery.id, NOTHING_RELAYED)
        assert alert.value >= 1.0 and alert.threshold == pytest.approx(1.0)
        assert alert.message == f"nothing relayed {alert.value:.0f} s after the send was confirmed"
        assert alert.stopped is False
        k = await flows.kpis(pair, delivery.id)
        assert (k.sent, [a.criterion for a in k.alerts]) == (0, [NOTHING_RELAYED])
        await rounds_pass(4)
        assert stored(pair, delivery.id) == [(NOTHING_RELAYED, False)]
        assert await state_of(pair, delivery.id) == pb.STATE_SENDING  # an alert, not a stop


# --- the stop on hard bounces -----------------------------------------------------------


class Gate:
    """A TCP relay from the delivery service to the MTA stub that can hold back what the
    service sends on its current connection: the link slowed to a stop mid-delivery.

    What the stub sends always goes through. A connection opened later (the stub gives
    up on a silent one within seconds) is not held."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.server: asyncio.Server | None = None
        self.connections = 0
        # The current connection: the bytes the service sent on it, how many of them
        # may pass (None: all), those held back, and where they go.
        self.sent = 0
        self.limit: int | None = None
        self._held = bytearray()
        self._to_stub: asyncio.StreamWriter | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    def pass_only(self, total: int) -> None:
        """Of the current connection, lets the first `total` bytes pass (those held so
        far up to there go now) and holds the rest."""
        self.limit = total
        self._flush()

    async def close(self) -> None:
        """Closes every connection, and waits for their handlers to end."""
        if self.server is not None:
            self.server.close()
        for writer in self._writers:
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=10)

    def _flush(self) -> None:
        writer = self._to_stub
        if writer is None or writer.is_closing():
            return
        passed = self.sent - len(self._held)
        room = len(self._held) if self.limit is None else max(0, self.limit - passed)
        if room:
            writer.write(bytes(self._held[:room]))
            del self._held[:room]

    async def _connected(
        self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter
    ) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        self._writers.append(to_client)
        try:
            upstream, to_upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            to_client.close()
            return
        self._writers.append(to_upstream)
        self.connections += 1
        self.sent, self.limit, self._held, self._to_stub = 0, None, bytearray(), to_upstream
        pipes = {
            asyncio.create_task(self._from_service(client, self.connections, to_upstream)),
            asyncio.create_task(self._from_stub(upstream, to_client)),
        }
        # Either side closing closes both; closed writers end the other pipe's reads.
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        to_client.close()
        to_upstream.close()
        await asyncio.wait(pipes)

    async def _from_service(
        self, reader: asyncio.StreamReader, number: int, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if number == self.connections:
                    self.sent += len(data)
                    self._held += data
                    self._flush()
                elif not writer.is_closing():
                    writer.write(data)
                await writer.drain()

    async def _from_stub(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not writer.is_closing():
                    writer.write(data)
                    await writer.drain()


def relay_batch_size(delivery: pb.Delivery, logs: list[pb.SendingLog]) -> int:
    """The bytes a relay batch of these messages takes on the wire, about: its expire
    time is a guess (the send is not confirmed yet), and the gRPC and HTTP/2 framing are
    a few dozen bytes more."""
    expire = timestamp_pb2.Timestamp()
    expire.FromSeconds(int(time.time()) + delivery.validity_period.seconds)
    batch = mta.RelayBatch(
        seq=1,
        delivery_id=delivery.id,
        content=mta.Content(
            subject=delivery.content.subject,
            body=delivery.content.body,
            links=delivery.content.links,
        ),
        expire_time=expire,
        messages=[mta.Message(message_id=s.message_id, email=s.email) for s in logs],
    )
    return mta.ExchangeRequest(relay=batch).ByteSize()


@pytest.fixture
async def gated(fresh_db_url: str, servers: Servers) -> AsyncIterator[tuple[Pair, Gate]]:
    """The pair with a Gate between them, the service stopping deliveries whose
    hard-bounce ratio is over 20 %."""
    stub = servers.mta_stub()
    gate = Gate(stub.address)
    gate_address = await gate.start()
    try:
        service = servers.delivery_service(
            fresh_db_url, gate_address, *SERVICE_ARGS, "--stop-hard-bounce-ratio", "0.2"
        )
        async for pair in open_pair(service, stub, fresh_db_url):
            yield pair, gate
    finally:
        await gate.close()


async def prepared_through(gate: Gate, pair: Pair, emails: list[str]) -> GatedDelivery:
    """A delivery to `emails`, approved, its link to the stub up through the gate."""
    delivery = await flows.create_and_approve(pair, flows.request(emails))
    logs = await flows.logs(pair, delivery.id)

    async def linked() -> bool:
        return gate.connections >= 1 and gate.sent > 0

    await await_until(linked, 30, message="the service never connected to the stub")
    # The relay's batches, in message order, and their sizes on the wire.
    batches = [logs[i : i + RELAY_BATCH] for i in range(0, len(logs), RELAY_BATCH)]
    return GatedDelivery(delivery, batches, [relay_batch_size(delivery, b) for b in batches])


@dataclass
class GatedDelivery:
    delivery: pb.Delivery
    batches: list[list[pb.SendingLog]]
    sizes: list[int]

    def through(self, gate: Gate, start: int, batches: int) -> None:
        """From `start` (the connection's bytes before the relay), lets the first
        `batches` relay batches through and half of the next: it never completes."""
        gate.pass_only(start + sum(self.sizes[:batches]) + self.sizes[batches] // 2)


async def confirm(pair: Pair, delivery_id: int) -> None:
    await pair.api.ConfirmSend(
        pb.ConfirmSendRequest(delivery_id=delivery_id), metadata=pair.sender, timeout=30
    )


def never_relayed(pair: Pair, delivery_id: int) -> int:
    ((n,),) = pair.sql(
        "SELECT count(*) FROM sending_logs WHERE delivery_id = %s AND relay_time IS NULL",
        delivery_id,
    )
    return int(n)


async def test_a_hard_bounce_ratio_over_the_limit_stops_a_delivery_still_sending(
    gated: tuple[Pair, Gate],
) -> None:
    """1,300 messages: the first relay batch (1,000) holds 300 hard bounces and 700
    messages delivered only after 10 minutes, so the bounces are all the feedback there
    is; the 300 after it are held on the way to the stub. 300 of 1,000 sent is 30 %,
    over the 20 % limit: the delivery is STOPPED, and its alert says so."""
    pair, gate = gated
    emails = (
        [f"hard+{i}@example.com" for i in range(300)]
        + [f"delay-600000+{i}@example.com" for i in range(700)]
        + [f"ok+{i}@example.com" for i in range(300)]
    )
    sending = await prepared_through(gate, pair, emails)
    delivery_id = sending.delivery.id
    assert sum(s.email.startswith("hard+") for s in sending.batches[0]) == 300
    sending.through(gate, gate.sent, 1)
    await confirm(pair, delivery_id)

    alert = await wait_alert(pair, delivery_id, HARD)
    assert alert.stopped is True, alert
    assert alert.value > 0.2 and alert.threshold == pytest.approx(0.05)
    await flows.wait_state(pair, delivery_id, pb.STATE_STOPPED, timeout=30)
    k = await flows.kpis(pair, delivery_id)
    # Only the first batch was relayed: the rest never will be.
    assert (k.to_deliver, k.sent, k.hard_failed) == (1300, 1000, 300)
    assert [(a.criterion, a.stopped) for a in k.alerts] == [(HARD, True)]
    assert stored(pair, delivery_id) == [(HARD, True)]
    assert never_relayed(pair, delivery_id) == 300


async def test_a_stop_after_an_earlier_hard_bounce_alert_is_told_too(
    gated: tuple[Pair, Gate],
) -> None:
    """10 % hard bounces in the first batch: an alert, no stop. Then a batch of hard
    bounces only: 1,100 of 2,000 sent, 55 %, and the delivery is stopped."""
    pair, gate = gated
    emails = (
        [f"hard+{i}@example.com" for i in range(100)]
        + [f"delay-600000+{i}@example.com" for i in range(900)]
        + [f"hard+{i}@other.example" for i in range(1000)]
        + [f"ok+{i}@example.com" for i in range(500)]
    )
    sending = await prepared_through(gate, pair, emails)
    delivery_id = sending.delivery.id
    start = gate.sent
    sending.through(gate, start, 1)
    await confirm(pair, delivery_id)
    first = await wait_alert(pair, delivery_id, HARD)
    if first.stopped or first.value != pytest.approx(0.1):
        pytest.fail(f"the first batch's alert is not the one expected: {first}")
    sending.through(gate, start, 2)
    await flows.wait_state(pair, delivery_id, pb.STATE_STOPPED, timeout=30)
    k = await flows.kpis(pair, delivery_id)
    if (k.sent, k.hard_failed) != (2000, 1100) or never_relayed(pair, delivery_id) != 500:
        pytest.fail(f"not the figures expected: {k}")
    # Stopped for its hard bounces: an alert should say so.
    assert any(a.stopped for a in k.alerts), list(k.alerts)


# --- ListAlerts' input ------------------------------------------------------------------


def forged(time_micros: int, key: str, scope: str) -> str:
    """A token as the service words them (validation.encode_keyset_token), made by hand."""
    digest = hashlib.sha256(scope.encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(f"v3:{time_micros}:{digest}:{key}".encode()).decode()


async def test_list_alerts_pages_and_refuses_bad_input(pair: Pair) -> None:
    deliveries = []
    for n in range(3):
        emails = [f"hard+{i}@d{n}.example" for i in range(5)]
        deliveries.append(await flows.send(pair, flows.request(emails)))
    for d in deliveries:
        await wait_alert(pair, d.id, HARD)

    # Pages of one, newest first, ending with an empty token.
    every = await list_alerts(pair, page_size=1)
    assert len(every) == 3
    times = [(a.raise_time.ToNanoseconds(), a.delivery_id) for a in every]
    assert times == sorted(times, reverse=True)
    assert sorted(a.delivery_id for a in every) == [d.id for d in deliveries]
    one = await list_alerts(pair, deliveries[1].id, page_size=1)
    assert [a.delivery_id for a in one] == [deliveries[1].id]

    async def code_of(request: pb.ListAlertsRequest) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pair.api.ListAlerts(request, timeout=30)
        return refused.value.code(), refused.value.details() or ""

    first = await pair.api.ListAlerts(pb.ListAlertsRequest(page_size=1), timeout=30)
    other = first.next_page_token
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for request in (
        pb.ListAlertsRequest(page_token="not-a-token"),
        pb.ListAlertsRequest(page_token=base64.urlsafe_b64encode(b"v3:1:2:3").decode()),
        # Another listing's token: all deliveries' is no place to resume one's.
        pb.ListAlertsRequest(delivery_id=deliveries[0].id, page_token=other),
        # Tokens in the service's own form, with a key it never issues.
        pb.ListAlertsRequest(page_token=forged(1, "1:9", "ListAlerts:None")),
        pb.ListAlertsRequest(page_token=forged(1, "x:1", "ListAlerts:None")),
        pb.ListAlertsRequest(delivery_id=-1),
        pb.ListAlertsRequest(page_size=1001),
        pb.ListAlertsRequest(page_size=-1),
    ):
        code, details = await code_of(request)
        assert code == invalid, (request, code, details)
        assert details, request
    assert await code_of(pb.ListAlertsRequest(delivery_id=999_999)) == (
        grpc.StatusCode.NOT_FOUND,
        "delivery 999999 does not exist",
    )
    # Without the role, or without a token.
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await pair.api.ListAlerts(pb.ListAlertsRequest(), metadata=pair.nobody, timeout=30)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await pair.anonymous.ListAlerts(pb.ListAlertsRequest(), timeout=30)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_forged_token_past_bigint_is_invalid(pair: Pair) -> None:
    # Page tokens carry an unkeyed digest of their filters: anyone can word one.
    request = pb.ListAlertsRequest(page_token=forged(1, "9999999999999999999:1", "ListAlerts:None"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.api.ListAlerts(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
