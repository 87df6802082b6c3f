"""A rogue peer speaking mta.v1 where the MTA should be: it takes the relay like an MTA,
then sends forged feedback of every kind the issue tried. None of it is believed, the
stream goes on, and the figures are those of the honest reports alone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import timestamp_pb2
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc

from delivery_service.domain import feedback as fb
from tests.conftest import Servers
from tests.integration import flows
from tests.integration.conftest import open_pair

K = mta.EventKind
HARD = K.EVENT_KIND_HARD_BOUNCE


class RoguePeer(mta_grpc.MtaServiceServicer):
    """Acknowledges every relay batch, and sends whatever feedback the test queues."""

    def __init__(self) -> None:
        self.relayed: dict[int, list[int]] = {}  # delivery id -> message ids
        self.outgoing: asyncio.Queue[mta.FeedbackBatch] = asyncio.Queue()
        self.acked: set[int] = set()
        self.answered = asyncio.Event()  # set at each FeedbackAck
        self.seq = 0

    async def wait_acked(self, seqs: set[int], timeout: float) -> None:
        """Until the service acknowledged every one of the batches `seqs`."""
        async with asyncio.timeout(timeout):
            while not seqs <= self.acked:
                self.answered.clear()
                await self.answered.wait()

    def send(self, events: list[mta.FeedbackEvent]) -> int:
        self.seq += 1
        self.outgoing.put_nowait(mta.FeedbackBatch(seq=self.seq, events=events))
        return self.seq

    async def _unimplemented(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "a rogue peer has no test controls")

    SetScenario = GetOutcomes = ClearScenario = _unimplemented

    async def Exchange(
        self, request_iterator: AsyncIterator[mta.ExchangeRequest], context: Any
    ) -> AsyncIterator[mta.ExchangeResponse]:
        responses: asyncio.Queue[mta.ExchangeResponse] = asyncio.Queue()

        async def read() -> None:
            async for request in request_iterator:
                kind = request.WhichOneof("kind")
                if kind == "relay":
                    batch = request.relay
                    ids = self.relayed.setdefault(batch.delivery_id, [])
                    ids.extend(m.message_id for m in batch.messages)
                    ack = mta.RelayAck(seq=batch.seq, accepted=len(batch.messages))
                    await responses.put(mta.ExchangeResponse(relay_ack=ack))
                elif kind == "ack":
                    self.acked.add(request.ack.seq)
                    self.answered.set()

        async def feed() -> None:
            while True:
                batch = await self.outgoing.get()
                await responses.put(mta.ExchangeResponse(feedback=batch))

        tasks = [asyncio.create_task(read()), asyncio.create_task(feed())]
        try:
            while True:
                yield await responses.get()
        finally:
            for task in tasks:
                task.cancel()


def event(
    event_id: str,
    delivery_id: int,
    message_id: int,
    kind: int,
    *,
    link: int = 0,
    at: float | None = None,
) -> mta.FeedbackEvent:
    when = timestamp_pb2.Timestamp()
    when.FromNanoseconds(int((time.time() if at is None else at) * 1e9))
    return mta.FeedbackEvent(
        event_id=event_id,
        message_id=message_id,
        delivery_id=delivery_id,
        kind=mta.EventKind.ValueType(kind),
        reason=mta.BOUNCE_REASON_USER_UNKNOWN if kind == HARD else mta.BOUNCE_REASON_UNSPECIFIED,
        attempt=1,
        link_index=link,
        event_time=when,
    )


@contextlib.asynccontextmanager
async def rogue_server(peer: RoguePeer) -> AsyncIterator[str]:
    # The service's keepalive pings are welcome, as at the real stub.
    server = grpc.aio.server(
        options=[
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    mta_grpc.add_MtaServiceServicer_to_server(peer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_forged_feedback_changes_no_figure(fresh_db_url: str, servers: Servers) -> None:
    peer = RoguePeer()
    async with rogue_server(peer) as address:
        service = servers.delivery_service(
            fresh_db_url, address, "--feedback-defer", "1", "--finalize-grace", "3600"
        )
        # open_pair wants a stub process for its MTA client: the service's own will do.
        async for pair in open_pair(service, service, fresh_db_url):
            emails = [f"u{i}@example.com" for i in range(20)]
            waiting = await flows.create_and_approve(pair, flows.request(emails, label="waits"))
            sent = await flows.send(pair, flows.request(emails, label="sent"))
            await flows.wait_state(pair, sent.id, pb.STATE_SENT)
            ids = peer.relayed[sent.id]
            queued = [
                row[0]
                for row in pair.sql(
                    "SELECT message_id FROM sending_logs WHERE delivery_id = %s", waiting.id
                )
            ]
            now = time.time()
            forged = [
                # A delivery that was never confirmed: reports of messages never relayed.
                *(event(f"a{m}", waiting.id, m, K.EVENT_KIND_DELIVERED) for m in queued),
                # Opens of messages no report delivered: at most Open % of nothing.
                *(event(f"o{m}:{i}", sent.id, m, K.EVENT_KIND_OPENED)
                  for m in ids for i in (1, 2)),
                # Times long before the relay, and in the future.
                *(event(f"p{m}", sent.id, m, HARD, at=now - 86400) for m in ids),
                *(event(f"f{m}", sent.id, m, HARD, at=now + 3600) for m in ids),
                # A click on a link the content does not have.
                event("c0", sent.id, ids[0], K.EVENT_KIND_CLICKED, link=99),
                # Messages that do not exist.
                *(event(f"x{i}", sent.id, 10**12 + i, K.EVENT_KIND_DELIVERED) for i in range(5)),
            ]  # fmt: skip
            # One batch carrying more events than any batch may: the excess is refused.
            flood = [event(f"z{i}", sent.id, ids[i % len(ids)], K.EVENT_KIND_OPENED)
                     for i in range(12_000)]  # fmt: skip
            await peer.wait_acked({peer.send(forged), peer.send(flood)}, 60)
            # The stream goes on: the honest reports are believed.
            honest = peer.send(
                [event(f"d{m}", sent.id, m, K.EVENT_KIND_DELIVERED) for m in ids]
                + [event(f"h{m}", sent.id, m, K.EVENT_KIND_OPENED) for m in ids[:5]]
            )
            await peer.wait_acked({honest}, 30)
            waiting_kpis = (await pair.api.GetKpis(pb.GetKpisRequest(delivery_id=waiting.id))).kpis
            assert (waiting_kpis.sent, waiting_kpis.delivered, waiting_kpis.failed) == (0, 0, 0)
            assert pair.sql(
                "SELECT count(*) FROM feedback_events WHERE delivery_id = %s", waiting.id
            ) == [(0,)]
            stats = await pair.api.ComputeStats(pb.ComputeStatsRequest(delivery_id=sent.id))
            assert stats.repaired_counters == 0
            kpis = stats.kpis
            assert (kpis.sent, kpis.delivered, kpis.failed) == (20, 20, 0)
            assert (kpis.opened, kpis.clicked) == (5, 0)
            assert kpis.open_percent == 25.0
            # Only the honest events were logged.
            assert pair.sql(
                "SELECT count(*) FROM feedback_events WHERE delivery_id = %s", sent.id
            ) == [(25,)]
            # A flood of one message: beyond 50 events logged for it, the rest is refused.
            target = ids[5]
            opens = [event(f"m{i}", sent.id, target, K.EVENT_KIND_OPENED) for i in range(60)]
            await peer.wait_acked({peer.send(opens[:30]), peer.send(opens[30:])}, 30)
            assert pair.sql(
                "SELECT count(*) FROM feedback_events WHERE delivery_id = %s AND message_id = %s",
                sent.id, target,
            ) == [(fb.MAX_EVENTS_PER_MESSAGE,)]  # fmt: skip
            stats = await pair.api.ComputeStats(pb.ComputeStatsRequest(delivery_id=sent.id))
            assert stats.repaired_counters == 0
            assert (stats.kpis.opened, stats.kpis.delivered) == (6, 20)
            log = service.log_tail(300)
            for reason in ("delivery_state", "not_delivered", "event_time", "link_index",
                           "events_per_batch", "events_per_message"):  # fmt: skip
                assert f"do not fit the relay record: {reason}" in log, reason
            break
