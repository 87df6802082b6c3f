"""The MTA stub as a real process, over a real loopback channel."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import re
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, cast

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mta.v1 import mta_service_pb2 as pb
from mta.v1 import mta_service_pb2_grpc

from mta_stub import presets, scenarios

REPO = Path(__file__).resolve().parents[2]
SERVICE = "mta.v1.MtaService"
RETRY_INTERVAL_MS = 50
ENGAGEMENT_DELAY_MS = 20
# Long enough for a slow machine; the stub itself answers in milliseconds.
WAIT = 10.0
HOUR = 3600.0


@dataclass
class Stub:
    process: asyncio.subprocess.Process
    address: str
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def log(self) -> str:
        return read_log(self.log_path)


def read_log(path: Path) -> str:
    return path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def running_stub(log_path: Path, *args: str, port: int = 0) -> AsyncIterator[Stub]:
    """Starts `python -m mta_stub --test-controls *args` on a port (0: a free one); waits
    until it is SERVING."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTA_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "protos")])
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mta_stub",
            "--port",
            str(port),
            "--retry-interval-ms",
            str(RETRY_INTERVAL_MS),
            "--engagement-delay-ms",
            str(ENGAGEMENT_DELAY_MS),
            "--test-controls",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            cwd=REPO,
            env=env,
        )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(WAIT):
            line = (await process.stdout.readline()).decode()
        match = re.fullmatch(r"listening on (.+):(\d+)\n", line)
        assert match, f"unexpected first line {line!r}; log:\n{read_log(log_path)}"
        stub = Stub(process, f"{match[1]}:{match[2]}", log_path)
        await wait_serving(stub.address)
        yield stub
    finally:
        if process.returncode is None:
            process.kill()
        await process.communicate()


async def wait_serving(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=SERVICE)
        async with asyncio.timeout(WAIT):
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    response = await health.Check(request, timeout=1)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.02)


async def stop(stub: Stub) -> int:
    """SIGTERM, then the exit code; fails if the stub takes more than a few seconds."""
    stub.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(5):
        return await stub.process.wait()


@pytest.fixture(scope="module")
async def stub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stub]:
    async with running_stub(tmp_path_factory.mktemp("mta") / "stub.log") as running:
        yield running
        assert await stop(running) == 0, running.log()


@pytest.fixture(scope="module")
async def mta(stub: Stub) -> AsyncIterator[mta_service_pb2_grpc.MtaServiceAsyncStub]:
    async with grpc.aio.insecure_channel(stub.address) as channel:
        yield async_stub(channel)


def async_stub(channel: grpc.aio.Channel) -> mta_service_pb2_grpc.MtaServiceAsyncStub:
    # The async stub class exists for type checkers only (a string here), and without
    # grpc's types the overloads cannot tell an aio channel from a sync one.
    return cast(
        "mta_service_pb2_grpc.MtaServiceAsyncStub", mta_service_pb2_grpc.MtaServiceStub(channel)
    )


def expire_in(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int((time.time() + seconds) * 1e9))
    return stamp


class Msg(NamedTuple):
    """A message to relay; Feed.relay sends one RelayBatch per delivery and validity."""

    message_id: int
    delivery_id: int
    email: str
    expire_after: float


def message(message_id: int, delivery_id: int, email: str, expire_after: float = HOUR) -> Msg:
    return Msg(message_id, delivery_id, email, expire_after)


def relay_batch(seq: int, messages: Sequence[Msg]) -> pb.RelayBatch:
    """One RelayBatch of messages that share a delivery and a validity."""
    first = messages[0]
    return pb.RelayBatch(
        seq=seq,
        delivery_id=first.delivery_id,
        content=pb.Content(
            subject="Hello",
            body="<p>Hi</p>",
            links=["https://example.com/a", "https://example.com/b", "https://example.com/c"],
        ),
        expire_time=expire_in(first.expire_after),
        messages=[pb.Message(message_id=m.message_id, email=m.email) for m in messages],
    )


@dataclass
class Feed:
    """The client's side of one Exchange stream."""

    call: grpc.aio.StreamStreamCall[pb.ExchangeRequest, pb.ExchangeResponse]
    ack: bool = True
    events: list[pb.FeedbackEvent] = field(default_factory=list)
    relay_acks: list[pb.RelayAck] = field(default_factory=list)
    relay_seq: int = 0

    @classmethod
    async def open(
        cls,
        mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
        *,
        ack: bool = True,
        client_id: str = "integration-test",
    ) -> Feed:
        feed = cls(mta.Exchange(timeout=60), ack=ack)
        await feed.call.write(pb.ExchangeRequest(hello=pb.Hello(client_id=client_id)))
        return feed

    async def relay(self, messages: Sequence[Msg]) -> pb.RelayAck:
        """Relays messages, a batch per delivery and validity, in order; returns the
        last batch's ack with the counts of all of them."""
        groups: dict[tuple[int, float], list[Msg]] = {}
        for m in messages:
            groups.setdefault((m.delivery_id, m.expire_after), []).append(m)
        total = pb.RelayAck()
        for group in groups.values():
            self.relay_seq += 1
            seq = self.relay_seq
            await self.call.write(pb.ExchangeRequest(relay=relay_batch(seq, group)))
            await self.read_until(functools.partial(self.acked, seq))
            ack = next(a for a in self.relay_acks if a.seq == seq)
            total.seq = seq
            total.accepted += ack.accepted
            total.duplicates += ack.duplicates
        return total

    def acked(self, seq: int) -> bool:
        return any(a.seq == seq for a in self.relay_acks)

    async def read_until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not done():
                response = await self.call.read()
                assert response is not grpc.aio.EOF, "the stub ended the stream"
                assert isinstance(response, pb.ExchangeResponse)
                if response.HasField("relay_ack"):
                    self.relay_acks.append(response.relay_ack)
                    continue
                self.events.extend(response.feedback.events)
                if self.ack:
                    ack = pb.FeedbackAck(seq=response.feedback.seq)
                    await self.call.write(pb.ExchangeRequest(ack=ack))

    async def events_of(self, delivery_id: int, expected: Callable[[set[str]], bool]) -> None:
        await self.read_until(lambda: expected(self.ids(delivery_id)))

    def ids(self, delivery_id: int) -> set[str]:
        return {e.event_id for e in self.events if e.delivery_id == delivery_id}

    def of(self, message_id: int) -> list[pb.FeedbackEvent]:
        return [e for e in self.events if e.message_id == message_id]

    async def close(self) -> None:
        """Half-closes; the stub then ends the stream with OK."""
        await self.call.done_writing()
        async with asyncio.timeout(WAIT):
            while await self.call.read() is not grpc.aio.EOF:
                pass
            assert await self.call.code() == grpc.StatusCode.OK


async def outcomes_when(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
    delivery_id: int,
    settled: Callable[[pb.GetOutcomesResponse], bool],
) -> pb.GetOutcomesResponse:
    """Polls GetOutcomes until settled: acks are applied after they are written."""
    request = pb.GetOutcomesRequest(delivery_id=delivery_id)
    async with asyncio.timeout(WAIT):
        while True:
            outcomes = await mta.GetOutcomes(request, timeout=5)
            if settled(outcomes):
                return outcomes
            await asyncio.sleep(0.01)


def all_acked(outcomes: pb.GetOutcomesResponse) -> bool:
    return outcomes.unacknowledged_events == 0


def counts(outcomes: pb.GetOutcomesResponse) -> dict[str, int]:
    return {f.name: value for f, value in outcomes.ListFields()}


def contains(*wanted: str) -> Callable[[set[str]], bool]:
    return lambda ids: set(wanted) <= ids


async def test_patterns_produce_their_events(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    d = 101
    feed = await Feed.open(mta)
    ack = await feed.relay(
        [
            message(1011, d, "plain@example.com"),
            message(1012, d, "hard-mailbox-full@example.com"),
            message(1013, d, "soft-2+tag@example.com"),
            message(1014, d, "soft-expire@example.com", expire_after=0.3),
            message(1015, d, "Open@example.com"),
            message(1016, d, "click-2@example.com"),
            message(1017, d, "hard@example.com"),
        ]
    )
    # Two batches: 1014 has a validity of its own.
    assert (ack.seq, ack.accepted, ack.duplicates) == (2, 7, 0)
    expected = contains(
        "1011:DELIVERED:1",
        "1012:HARD_BOUNCE:1",
        "1013:SOFT_BOUNCE:1",
        "1013:SOFT_BOUNCE:2",
        "1013:DELIVERED:3",
        "1015:DELIVERED:1",
        "1015:OPENED:1",
        "1016:DELIVERED:1",
        "1016:OPENED:1",
        "1016:CLICKED:1",
        "1017:HARD_BOUNCE:1",
    )
    await feed.events_of(
        d, lambda ids: expected(ids) and any(i.startswith("1014:EXPIRED:") for i in ids)
    )

    reasons = {e.message_id: e.reason for e in feed.events if e.kind == pb.EVENT_KIND_HARD_BOUNCE}
    assert reasons == {1012: pb.BOUNCE_REASON_MAILBOX_FULL, 1017: pb.BOUNCE_REASON_USER_UNKNOWN}
    assert [e.event_id for e in feed.of(1013)] == [
        "1013:SOFT_BOUNCE:1",
        "1013:SOFT_BOUNCE:2",
        "1013:DELIVERED:3",
    ]
    soft_expire = feed.of(1014)
    assert {e.kind for e in soft_expire[:-1]} == {pb.EVENT_KIND_SOFT_BOUNCE}
    assert len(soft_expire) >= 3
    assert soft_expire[-1].kind == pb.EVENT_KIND_EXPIRED
    assert [e.link_index for e in feed.of(1016) if e.kind == pb.EVENT_KIND_CLICKED] == [2]

    outcomes = await outcomes_when(mta, d, all_acked)
    assert counts(outcomes) == {
        "accepted": 7,
        "delivered": 4,
        "hard_bounced": 2,
        "soft_bounced": 2,
        "expired": 1,
        "opened": 2,
        "clicked": 1,
    }
    await feed.close()


async def test_a_message_relayed_again_is_a_duplicate_and_reports_nothing_new(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    d = 102
    batch = [message(1021, d, "open@example.com"), message(1022, d, "hard@example.com")]
    feed = await Feed.open(mta)
    assert (await feed.relay(batch)).accepted == 2
    await feed.events_of(d, contains("1021:OPENED:1", "1022:HARD_BOUNCE:1"))
    await feed.close()

    again = await Feed.open(mta)
    ack = await again.relay([*batch, batch[0]])
    assert (ack.accepted, ack.duplicates) == (0, 3)
    # A new message's first event comes after anything the duplicates would have caused.
    assert (await again.relay([message(1023, d, "new@example.com")])).accepted == 1
    await again.events_of(d, contains("1023:DELIVERED:1"))
    assert again.ids(d) == {"1023:DELIVERED:1"}
    outcomes = await outcomes_when(mta, d, all_acked)
    assert (outcomes.accepted, outcomes.duplicates, outcomes.delivered) == (3, 3, 2)
    await again.close()


async def test_unacknowledged_events_come_again_on_the_next_stream(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    d = 103
    wanted = contains("1031:DELIVERED:1", "1032:DELIVERED:1", "1033:DELIVERED:1", "1033:OPENED:1")
    first = await Feed.open(mta, ack=False)
    await first.relay(
        [
            message(1031, d, "a@example.com"),
            message(1032, d, "b@example.com"),
            message(1033, d, "open@example.com"),
        ]
    )
    await first.events_of(d, wanted)
    first.call.cancel()
    outcomes = await mta.GetOutcomes(pb.GetOutcomesRequest(delivery_id=d), timeout=5)
    assert outcomes.unacknowledged_events == 4

    second = await Feed.open(mta)
    await second.events_of(d, wanted)
    assert second.ids(d) == first.ids(d)
    assert sorted(e.event_id for e in second.events if e.delivery_id == d) == sorted(first.ids(d))
    outcomes = await outcomes_when(mta, d, all_acked)
    assert (outcomes.delivered, outcomes.opened) == (3, 1)
    await second.close()


def expected_event_ids(
    mix: pb.Mix, ids: range, extras: scenarios.MixExtras | None = None
) -> set[str]:
    """What the stub must report of these messages, worked out from the same mix (and the
    extras it was started with)."""
    fields = (
        f.name
        for f in dataclasses.fields(scenarios.Mix)
        if f.name in pb.Mix.DESCRIPTOR.fields_by_name
    )
    drawn = scenarios.Mix(**{name: getattr(mix, name) for name in fields})
    if extras is not None:
        drawn = extras.apply(drawn)
    expected: set[str] = set()
    timing = scenarios.Timing(RETRY_INTERVAL_MS / 1000, ENGAGEMENT_DELAY_MS / 1000)
    for message_id in ids:
        fate = scenarios.mix_fate(drawn, message_id)
        step: scenarios.Step | None = scenarios.first_step(fate, 0.0, HOUR)
        while step is not None:
            expected.add(scenarios.event_id(message_id, step.kind, step.attempt))
            step = scenarios.next_step(fate, step, HOUR, timing)
    return expected


async def test_a_seeded_mix_with_duplicated_events(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    d = 104
    # The seeded mix without soft bounces until expiry: every timeline ends within the hour.
    # Its 200 messages meet every fate (4 hard bounces, 31 soft, 88 opens, 31 clicks).
    mix = presets.variant(soft_until_expiry_rate=0.0)
    ids = range(10_401, 10_601)
    expected = expected_event_ids(mix, ids)

    faults = pb.Faults(duplicate_events=True)
    await mta.SetScenario(pb.SetScenarioRequest(mix=mix, faults=faults), timeout=5)
    try:
        feed = await Feed.open(mta)
        await feed.relay([message(i, d, f"user{i}@example.com") for i in ids])
        sent = Counter[str]()

        def twice() -> bool:
            sent.clear()
            sent.update(e.event_id for e in feed.events if e.delivery_id == d)
            return set(sent) >= expected and all(sent[i] >= 2 for i in expected)

        await feed.read_until(twice)
        assert set(sent) == expected
        outcomes = await outcomes_when(mta, d, all_acked)
        kinds = Counter(i.split(":")[1] for i in expected)
        assert outcomes.accepted == len(ids)
        assert outcomes.delivered == kinds["DELIVERED"]
        assert outcomes.hard_bounced == kinds["HARD_BOUNCE"]
        assert outcomes.opened == kinds["OPENED"]
        assert outcomes.clicked == kinds["CLICKED"]
        assert outcomes.in_flight == 0
        await feed.close()
    finally:
        await mta.SetScenario(pb.SetScenarioRequest(), timeout=5)


@pytest.mark.parametrize(
    ("request_", "field_name"),
    [
        (pb.SetScenarioRequest(mix=pb.Mix(hard_bounce_rate=1.5)), "mix.hard_bounce_rate"),
        (
            pb.SetScenarioRequest(mix=pb.Mix(hard_bounce_rate=0.6, soft_then_delivered_rate=0.6)),
            "mix.hard_bounce_rate",
        ),
        (pb.SetScenarioRequest(mix=pb.Mix(open_rate=-0.5)), "mix.open_rate"),
        (pb.SetScenarioRequest(mix=pb.Mix(max_retries=-1)), "mix.max_retries"),
        (pb.SetScenarioRequest(faults=pb.Faults(reorder_window=-1)), "faults.reorder_window"),
        (pb.SetScenarioRequest(retry_interval_ms=-10), "retry_interval_ms"),
        # Scopes.
        (pb.SetScenarioRequest(delivery_id=-1), "delivery_id"),
        (pb.SetScenarioRequest(delivery_id=1, client_id="x"), "client_id"),
        (pb.SetScenarioRequest(delivery_id=1, faults=pb.Faults(max_delay_ms=5)), "faults"),
        (pb.SetScenarioRequest(delivery_id=1, hold_feedback=True), "hold_feedback"),
        (pb.SetScenarioRequest(client_id="x" * 201), "client_id"),
    ],
)
async def test_set_scenario_rejects_bad_input(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
    request_: pb.SetScenarioRequest,
    field_name: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await mta.SetScenario(request_, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith(f"{field_name}: ")


@pytest.mark.parametrize(
    ("spoil", "details"),
    [
        (lambda b: setattr(b.messages[1], "email", ""), "relay.messages[1].email: required"),
        (lambda b: setattr(b.messages[0], "message_id", -3),
         "relay.messages[0].message_id: must be positive"),
        (lambda b: setattr(b, "delivery_id", 0), "relay.delivery_id: must be positive"),
        (lambda b: b.ClearField("expire_time"), "relay.expire_time: required"),
        (lambda b: setattr(b.content, "subject", ""), "relay.content.subject: required"),
        (lambda b: b.ClearField("messages"), "relay.messages: must hold 1 to 10000, not 0"),
    ],
    ids=["email", "message_id", "delivery_id", "expire_time", "subject", "no messages"],
)  # fmt: skip
async def test_a_bad_relay_batch_is_rejected_whole(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
    spoil: Callable[[pb.RelayBatch], object],
    details: str,
) -> None:
    d = 105
    feed = await Feed.open(mta)
    batch = relay_batch(1, [message(1051, d, "a@example.com"), message(1052, d, "b@example.com")])
    spoil(batch)
    await feed.call.write(pb.ExchangeRequest(relay=batch))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await feed.read_until(lambda: False)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == details
    outcomes = await mta.GetOutcomes(pb.GetOutcomesRequest(delivery_id=d), timeout=5)
    assert outcomes.accepted == 0


async def test_a_stream_must_open_with_hello(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    call = mta.Exchange(timeout=10)
    await call.write(pb.ExchangeRequest(ack=pb.FeedbackAck(seq=1)))
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await call.details() == "first message must be hello"


async def test_get_outcomes_rejects_a_negative_delivery(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await mta.GetOutcomes(pb.GetOutcomesRequest(delivery_id=-1), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_reflection_lists_the_service(stub: Stub) -> None:
    async with grpc.aio.insecure_channel(stub.address) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        call = reflection.ServerReflectionInfo(iter([request]), timeout=5)
        names = {s.name async for r in call for s in r.list_services_response.service}
    assert SERVICE in names


async def test_sigterm_ends_open_streams_and_stops_promptly(tmp_path: Path) -> None:
    async with running_stub(tmp_path / "stub.log") as running:
        async with grpc.aio.insecure_channel(running.address) as channel:
            feed = await Feed.open(async_stub(channel))
            await feed.relay([message(1, 1, "someone@example.com")])
            # Within the 5 s grace: an open stream must not hold the shutdown up.
            async with asyncio.timeout(3):
                running.process.send_signal(signal.SIGTERM)
                assert await feed.call.code() == grpc.StatusCode.UNAVAILABLE
                assert await running.process.wait() == 0, running.log()
        log = running.log()
        assert "stopped" in log
        # A routine stop is no error: the open stream's line says why it ended.
        assert " ERROR " not in log and " UNKNOWN " not in log, log
        assert "Exchange UNAVAILABLE" in log, log


async def test_a_killed_stub_restarted_on_its_spool_keeps_what_it_acknowledged(
    tmp_path: Path,
) -> None:
    spool = str(tmp_path / "spool.sqlite3")
    a, b = 201, 202
    batch = [
        message(2011, a, "plain@example.com"),
        message(2012, a, "hard@example.com"),
        message(2013, a, "open@example.com"),
        # Due after the restart: the schedule must survive the kill.
        message(2021, b, "delay-1500@example.com"),
        # Delivered at once, its late bounce due after the restart.
        message(2022, b, "late-hard-1500@example.com"),
    ]
    first_ids = contains(
        "2011:DELIVERED:1", "2012:HARD_BOUNCE:1", "2013:DELIVERED:1", "2013:OPENED:1"
    )
    async with (
        running_stub(tmp_path / "first.log", "--spool", spool) as first,
        grpc.aio.insecure_channel(first.address) as channel,
    ):
        mta = async_stub(channel)
        feed = await Feed.open(mta, ack=False)
        assert (await feed.relay(batch)).accepted == 5
        await feed.events_of(a, first_ids)
        await feed.events_of(b, contains("2022:DELIVERED:1"))
        before = await outcomes_when(mta, a, lambda o: o.unacknowledged_events == 4)
        pending = await mta.GetOutcomes(pb.GetOutcomesRequest(delivery_id=b), timeout=5)
        # The late bounce decides 2022's fate: in flight until it comes.
        assert (pending.in_flight, pending.delivered, pending.hard_bounced) == (2, 0, 0)
        # After the relay ack, before any feedback ack.
        first.process.send_signal(signal.SIGKILL)
        assert await first.process.wait() == -signal.SIGKILL

    async with (
        running_stub(tmp_path / "second.log", "--spool", spool, port=first.port) as second,
        grpc.aio.insecure_channel(second.address) as channel,
    ):
        assert second.address == first.address
        mta = async_stub(channel)
        after = await mta.GetOutcomes(pb.GetOutcomesRequest(delivery_id=a), timeout=5)
        assert counts(after) == counts(before)
        again = await Feed.open(mta)
        ack = await again.relay(batch)
        assert (ack.accepted, ack.duplicates) == (0, 5)
        await again.events_of(a, first_ids)
        await again.events_of(
            b, contains("2021:DELIVERED:1", "2022:DELIVERED:1", "2022:HARD_BOUNCE:1")
        )
        (late,) = [e for e in again.of(2022) if e.kind == pb.EVENT_KIND_HARD_BOUNCE]
        assert late.smtp_reply.code == 550
        assert late.smtp_reply.text.startswith("<late-hard-1500@example.com>: ")
        # The same events, once each, with the same ids; nothing new for the duplicates.
        resent = sorted(e.event_id for e in again.events if e.delivery_id == a)
        assert resent == sorted(feed.ids(a))
        delivered_late = await outcomes_when(mta, b, all_acked)
        assert (delivered_late.delivered, delivered_late.in_flight) == (1, 0)
        assert delivered_late.hard_bounced == 1
        settled = await outcomes_when(mta, a, all_acked)
        expected = {**counts(before), "duplicates": 3}
        del expected["unacknowledged_events"]
        assert counts(settled) == expected
        await again.close()
        assert await stop(second) == 0, second.log()


async def test_hold_feedback_keeps_events_until_it_is_released(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    d = 106
    await mta.SetScenario(pb.SetScenarioRequest(hold_feedback=True), timeout=5)
    try:
        feed = await Feed.open(mta)
        await feed.relay(
            [message(1061, d, "open@example.com"), message(1062, d, "hard@example.com")]
        )
        await outcomes_when(mta, d, lambda o: o.unacknowledged_events == 3)
        reading = asyncio.create_task(feed.read_until(lambda: bool(feed.ids(d))))
        # Held: nothing comes within many times the stub's flush interval.
        done, _ = await asyncio.wait([reading], timeout=0.5)
        assert not done and not feed.ids(d)
        await mta.SetScenario(pb.SetScenarioRequest(hold_feedback=False), timeout=5)
        async with asyncio.timeout(WAIT):
            await reading
        await feed.events_of(d, contains("1061:DELIVERED:1", "1061:OPENED:1", "1062:HARD_BOUNCE:1"))
        await outcomes_when(mta, d, all_acked)
        await feed.close()
    finally:
        await mta.SetScenario(pb.SetScenarioRequest(), timeout=5)


async def test_a_delayed_address_is_delivered_after_its_delay_or_expires(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    d = 107
    feed = await Feed.open(mta)
    relayed_at = time.time()
    await feed.relay(
        [
            message(1071, d, "delay-1000@example.com"),
            message(1072, d, "delay-600000@example.com", expire_after=0.3),
        ]
    )
    pending = await mta.GetOutcomes(pb.GetOutcomesRequest(delivery_id=d), timeout=5)
    assert (pending.accepted, pending.in_flight, pending.unacknowledged_events) == (2, 2, 0)
    await feed.events_of(d, contains("1071:DELIVERED:1", "1072:EXPIRED:1"))
    (delivered,) = feed.of(1071)
    assert delivered.event_time.ToNanoseconds() / 1e9 >= relayed_at + 1.0
    outcomes = await outcomes_when(mta, d, all_acked)
    assert (outcomes.delivered, outcomes.expired, outcomes.in_flight) == (1, 1, 0)
    await feed.close()


async def test_a_new_stream_of_the_same_client_takes_over_at_once(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    d = 108
    wanted = contains("1081:DELIVERED:1", "1082:DELIVERED:1", "1082:OPENED:1")
    first = await Feed.open(mta, ack=False, client_id="taken-over")
    await first.relay([message(1081, d, "a@example.com"), message(1082, d, "open@example.com")])
    await first.events_of(d, wanted)
    # The first stream stays open, unacknowledged, as that of a client that died silently.
    second = await Feed.open(mta, client_id="taken-over")
    loop = asyncio.get_running_loop()
    opened_at = loop.time()
    await second.events_of(d, wanted)
    # At once: well under any keepalive, with room for a slow machine.
    assert loop.time() - opened_at < 2
    assert second.ids(d) == first.ids(d)
    await outcomes_when(mta, d, all_acked)
    # The first stream is on standby: it still relays, the feedback goes to the second.
    await first.relay([message(1083, d, "b@example.com")])
    await second.events_of(d, contains("1083:DELIVERED:1"))
    assert "1083:DELIVERED:1" not in first.ids(d)
    # Once the second closes, the first is fed again.
    await second.close()
    first.ack = True
    await first.relay([message(1084, d, "c@example.com")])
    await first.events_of(d, contains("1084:DELIVERED:1"))
    await first.close()
    await outcomes_when(mta, d, all_acked)


async def test_feedback_goes_to_the_client_that_relayed_the_message(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    d = 109
    one = await Feed.open(mta, client_id="client-one")
    two = await Feed.open(mta, client_id="client-two")
    await one.relay([message(1091, d, "a@example.com")])
    await two.relay([message(1092, d, "b@example.com")])
    await one.events_of(d, contains("1091:DELIVERED:1"))
    await two.events_of(d, contains("1092:DELIVERED:1"))
    await outcomes_when(mta, d, all_acked)
    assert one.ids(d) == {"1091:DELIVERED:1"}
    assert two.ids(d) == {"1092:DELIVERED:1"}
    mine = await mta.GetOutcomes(
        pb.GetOutcomesRequest(delivery_id=d, client_id="client-one"), timeout=5
    )
    assert (mine.accepted, mine.delivered) == (1, 1)
    await one.close()
    await two.close()


async def test_a_scenario_scoped_to_a_delivery_leaves_the_others_alone(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    bounced, plain = 110, 111
    request = pb.SetScenarioRequest(mix=pb.Mix(hard_bounce_rate=1.0), delivery_id=bounced)
    await mta.SetScenario(request, timeout=5)
    try:
        feed = await Feed.open(mta)
        await feed.relay([message(1101, bounced, "a@example.com")])
        await feed.relay([message(1111, plain, "a@example.com")])
        await feed.events_of(bounced, contains("1101:HARD_BOUNCE:1"))
        await feed.events_of(plain, contains("1111:DELIVERED:1"))
        cleared = await mta.ClearScenario(pb.ClearScenarioRequest(delivery_id=bounced), timeout=5)
        assert cleared.cleared
        await feed.relay([message(1102, bounced, "b@example.com")])
        await feed.events_of(bounced, contains("1102:DELIVERED:1"))
        await feed.close()
    finally:
        await mta.ClearScenario(pb.ClearScenarioRequest(delivery_id=bounced), timeout=5)
    again = await mta.ClearScenario(pb.ClearScenarioRequest(delivery_id=bounced), timeout=5)
    assert not again.cleared


@pytest.mark.parametrize(
    ("client_id", "details"),
    [("", "hello.client_id: required"), ("x" * 201, "hello.client_id: must be at most 200")],
)
async def test_a_hello_must_name_its_client(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub, client_id: str, details: str
) -> None:
    call = mta.Exchange(timeout=10)
    await call.write(pb.ExchangeRequest(hello=pb.Hello(client_id=client_id)))
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await call.details() or "").startswith(details)


async def test_the_test_controls_are_off_without_the_flag(tmp_path: Path) -> None:
    async with (
        running_stub(tmp_path / "stub.log", "--no-test-controls") as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        mta = async_stub(channel)
        for name, request in (
            ("SetScenario", pb.SetScenarioRequest()),
            ("ClearScenario", pb.ClearScenarioRequest()),
            ("GetOutcomes", pb.GetOutcomesRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await getattr(mta, name)(request, timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert f"{name} is a test control" in (raised.value.details() or "")
            assert "--test-controls" in (raised.value.details() or "")
        # The stream itself is served.
        feed = await Feed.open(mta)
        await feed.relay([message(1, 1, "someone@example.com")])
        await feed.events_of(1, contains("1:DELIVERED:1"))
        await feed.close()
        assert await stop(running) == 0, running.log()


def seconds(event: pb.FeedbackEvent) -> float:
    return event.event_time.ToNanoseconds() / 1e9


def reply(event: pb.FeedbackEvent) -> tuple[int, str, str] | None:
    if not event.HasField("smtp_reply"):
        return None
    return event.smtp_reply.code, event.smtp_reply.enhanced_status, event.smtp_reply.text


async def test_complaints_late_bounces_and_auto_replies_follow_the_delivery_report(
    mta: mta_service_pb2_grpc.MtaServiceAsyncStub,
) -> None:
    d = 112
    feed = await Feed.open(mta)
    await feed.relay(
        [
            message(1121, d, "complaint@example.com"),
            message(1122, d, "late-hard@example.com"),
            message(1123, d, "autoreply+x@example.com"),
            message(1124, d, "hard-account-disabled@example.com"),
            message(1125, d, "late-hard-1500@example.com"),
            message(1126, d, "soft-not-defined@example.com", expire_after=0.12),
        ]
    )
    await feed.events_of(d, contains("1122:HARD_BOUNCE:1", "1125:DELIVERED:1"))
    # 1125's bounce is not due yet: its fate is undecided, its delivery report counts not.
    pending = await mta.GetOutcomes(pb.GetOutcomesRequest(delivery_id=d), timeout=5)
    assert pending.in_flight >= 1
    assert pending.hard_bounced <= 2
    await feed.events_of(
        d,
        lambda ids: (
            contains(
                "1121:DELIVERED:1",
                "1121:COMPLAINT:1",
                "1122:DELIVERED:1",
                "1123:DELIVERED:1",
                "1123:IGNORED:1",
                "1124:HARD_BOUNCE:1",
                "1125:HARD_BOUNCE:1",
            )(ids)
            and any(i.startswith("1126:EXPIRED:") for i in ids)
        ),
    )

    def timeline(message_id: int) -> list[tuple[int, int, tuple[int, str, str] | None]]:
        return [(e.kind, e.reason, reply(e)) for e in feed.of(message_id)]

    assert timeline(1121) == [
        (pb.EVENT_KIND_DELIVERED, pb.BOUNCE_REASON_UNSPECIFIED, None),
        (pb.EVENT_KIND_COMPLAINT, pb.BOUNCE_REASON_UNSPECIFIED, None),
    ]
    user_unknown = ": Recipient address rejected: User unknown in virtual mailbox table"
    assert timeline(1122) == [
        (pb.EVENT_KIND_DELIVERED, pb.BOUNCE_REASON_UNSPECIFIED, None),
        (
            pb.EVENT_KIND_HARD_BOUNCE,
            pb.BOUNCE_REASON_USER_UNKNOWN,
            (550, "5.1.1", "<late-hard@example.com>" + user_unknown),
        ),
    ]
    assert timeline(1123) == [
        (pb.EVENT_KIND_DELIVERED, pb.BOUNCE_REASON_UNSPECIFIED, None),
        (
            pb.EVENT_KIND_IGNORED,
            pb.BOUNCE_REASON_AUTO_REPLY,
            (0, "", "Auto-Submitted: auto-replied (out of office)"),
        ),
    ]
    assert timeline(1124) == [
        (
            pb.EVENT_KIND_HARD_BOUNCE,
            pb.BOUNCE_REASON_ACCOUNT_DISABLED,
            (
                550,
                "5.2.1",
                "<hard-account-disabled@example.com>: The email account that you tried to "
                "reach is disabled",
            ),
        )
    ]
    *soft, expired = timeline(1126)
    not_defined = (
        pb.EVENT_KIND_SOFT_BOUNCE,
        pb.BOUNCE_REASON_NOT_DEFINED,
        (
            451,
            "4.3.0",
            "<soft-not-defined@example.com>: Temporary local problem, please try again later",
        ),
    )
    assert len(soft) >= 2 and set(soft) == {not_defined}
    assert expired == (pb.EVENT_KIND_EXPIRED, pb.BOUNCE_REASON_UNSPECIFIED, None)
    # Each after its delivery report, by the documented delay; each with an id of its own.
    for message_id, delay in ((1121, 0.05), (1122, 0.2), (1123, 0.05), (1125, 1.5)):
        delivered, after = feed.of(message_id)
        assert seconds(after) - seconds(delivered) == pytest.approx(delay, abs=0.002)
        assert delivered.event_id != after.event_id
    outcomes = await outcomes_when(mta, d, all_acked)
    # A complaint or an auto-reply is no outcome of GetOutcomes; a late bounce a hard one.
    assert counts(outcomes) == {
        "accepted": 6,
        "delivered": 2,
        "hard_bounced": 3,
        "soft_bounced": 1,
        "expired": 1,
    }
    await feed.close()


async def test_a_stub_started_with_mix_extras_adds_complaints_and_late_bounces_to_mixes(
    tmp_path: Path,
) -> None:
    d = 113
    extras = scenarios.MixExtras(
        complaint_rate=0.05, late_hard_bounce_rate=0.05, late_hard_bounce_max_ms=80
    )
    mix = presets.variant(soft_until_expiry_rate=0.0)
    ids = range(11_301, 11_601)
    expected = expected_event_ids(mix, ids, extras)
    kinds = Counter(i.split(":")[1] for i in expected)
    assert kinds["COMPLAINT"] > 0
    async with (
        running_stub(
            tmp_path / "stub.log", *presets.stub_args(dataclasses.asdict(extras))
        ) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        mta = async_stub(channel)
        await mta.SetScenario(pb.SetScenarioRequest(mix=mix, delivery_id=d), timeout=5)
        feed = await Feed.open(mta)
        await feed.relay([message(i, d, f"user{i}@example.com") for i in ids])
        await feed.events_of(d, lambda got: got >= expected)
        assert feed.ids(d) == expected
        delivered = {e.message_id: e for e in feed.events if e.kind == pb.EVENT_KIND_DELIVERED}
        late = [
            e
            for e in feed.events
            if e.kind == pb.EVENT_KIND_HARD_BOUNCE and e.message_id in delivered
        ]
        assert late
        for bounce in late:
            assert bounce.reason == pb.BOUNCE_REASON_USER_UNKNOWN
            assert reply(bounce) == (
                550,
                "5.1.1",
                f"<user{bounce.message_id}@example.com>"
                ": Recipient address rejected: User unknown in virtual mailbox table",
            )
            gap = seconds(bounce) - seconds(delivered[bounce.message_id])
            assert 0.001 - 1e-6 <= gap <= 0.08 + 1e-6
        outcomes = await outcomes_when(mta, d, all_acked)
        assert outcomes.in_flight == 0
        assert outcomes.delivered == kinds["DELIVERED"] - len(late)
        assert outcomes.hard_bounced == kinds["HARD_BOUNCE"]
        await feed.close()
        assert await stop(running) == 0, running.log()


async def logged(stub: Stub, text: str) -> None:
    """Polls the stub's log until it has the text."""
    async with asyncio.timeout(WAIT):
        while True:
            if text in stub.log():
                return
            await asyncio.sleep(0.05)


async def test_a_stub_forgets_messages_a_retention_after_their_expiry(tmp_path: Path) -> None:
    d = 114
    spool = str(tmp_path / "spool.sqlite3")
    # Over at acceptance, expired 0.2 s later: forgotten a retention (1 s) after that, at
    # the stub's next round (every second with so short a retention). The bounce's
    # address, kept for its SMTP reply, goes with it.
    short = [
        message(11_401, d, "plain@example.com", 0.2),
        message(11_402, d, "hard@example.com", 0.2),
    ]
    kept = [message(11_403, d, "plain@example.com")]
    args = ("--spool", spool, "--retention-seconds", "1")
    async with (
        running_stub(tmp_path / "first.log", *args) as first,
        grpc.aio.insecure_channel(first.address) as channel,
    ):
        feed = await Feed.open(async_stub(channel))
        assert (await feed.relay([*short, *kept])).accepted == 3
        await logged(first, "forgot 2 messages expired before")
        await feed.close()
        assert await stop(first) == 0, first.log()
    with contextlib.closing(sqlite3.connect(spool)) as db:
        assert db.execute("SELECT message_id FROM held").fetchall() == [(11_403,)]
        assert db.execute("SELECT message_id FROM addresses").fetchall() == []
    async with (
        running_stub(tmp_path / "second.log", *args) as second,
        grpc.aio.insecure_channel(second.address) as channel,
    ):
        mta = async_stub(channel)
        feed = await Feed.open(mta)
        # Relayed again: the forgotten ones are new, the kept one a duplicate.
        ack = await feed.relay([*short, *kept])
        assert (ack.accepted, ack.duplicates) == (2, 1)
        outcomes = await mta.GetOutcomes(pb.GetOutcomesRequest(delivery_id=d), timeout=5)
        assert (outcomes.accepted, outcomes.duplicates) == (5, 1)
        await feed.close()
        assert await stop(second) == 0, second.log()
