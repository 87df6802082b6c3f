"""The gRPC face of the stub: a thin servicer, and the app that grpc_common.serving runs."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, NamedTuple

import grpc
from mta.v1 import mta_service_pb2, mta_service_pb2_grpc

from grpc_common import serving
from mta_stub import observability, replies
from mta_stub.config import Settings
from mta_stub.engine import AckError, Batch, Engine, Relayed, ScenarioLimitError, Session
from mta_stub.scenarios import (
    MAX_CLIENT_ID,
    REPLY_KINDS,
    BounceReason,
    EventKind,
    Faults,
    Mix,
    MixExtras,
    ScenarioError,
    Timing,
    checked_scope,
)
from mta_stub.spool import IN_MEMORY, Spool, SpoolFull

log = logging.getLogger(__name__)

SERVICE_NAME: str = mta_service_pb2.DESCRIPTOR.services_by_name["MtaService"].full_name
MAX_RELAY_MESSAGES = 10_000
# The largest request the stub takes, in bytes on the wire: an ExchangeRequest carrying a
# RelayBatch of MAX_RELAY_MESSAGES messages and the largest content the delivery service
# accepts, each field with its tag and length:
#   messages: 10,000 x (3 + 10 + 257), an int64 id and a 254-byte address   2,700,000
#   content: subject 998 x 4 + 3, body 1,048,576 x 4 + 5, 100 links of
#            2,048 x 4 + 3 (UTF-8's 4 bytes a character), and its own 5       5,017,814
#   seq, delivery_id, expire_time, the relay's tag and length                       40
#   total                                                                < 7,717,854 (7.4 MiB)
# 8 MiB is 8 % over it; larger requests are refused with RESOURCE_EXHAUSTED, unread.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
# Responses waiting to be written on one stream; a slow reader holds back the feeding.
_OUTGOING_LIMIT = 8

# By name, so that a value that drifted from the proto fails at import.
_KINDS = {kind: mta_service_pb2.EventKind.Value(f"EVENT_KIND_{kind.name}") for kind in EventKind}
_REASONS = {
    reason: mta_service_pb2.BounceReason.Value(f"BOUNCE_REASON_{reason.name}")
    for reason in BounceReason
}
# What GetOutcomes says of the stub's record: the fields the proto has.
_OUTCOME_FIELDS = frozenset(f.name for f in mta_service_pb2.GetOutcomesResponse.DESCRIPTOR.fields)


class BadRequest(ValueError):
    """Bad input on the stream; str() names the field."""


class _End(NamedTuple):
    """Ends the response stream: OK when code is None, else with that status."""

    code: grpc.StatusCode | None = None
    details: str = ""


_Outgoing = mta_service_pb2.ExchangeResponse | _End


class MtaServicer(mta_service_pb2_grpc.MtaServiceServicer):
    """Validates and maps protos; the engine does the work.

    The test controls (SetScenario, ClearScenario, GetOutcomes) answer UNIMPLEMENTED
    unless test_controls is on. A mix set by SetScenario gets mix_extras, the fields
    mta.v1.Mix has none for.
    """

    def __init__(
        self, engine: Engine, test_controls: bool = False, mix_extras: MixExtras | None = None
    ) -> None:
        self._engine = engine
        self._test_controls = test_controls
        self._mix_extras = mix_extras or MixExtras()

    async def Exchange(
        self,
        request_iterator: AsyncIterator[mta_service_pb2.ExchangeRequest],
        context: grpc.aio.ServicerContext[
            mta_service_pb2.ExchangeRequest, mta_service_pb2.ExchangeResponse
        ],
    ) -> AsyncIterator[mta_service_pb2.ExchangeResponse]:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be hello")
            return
        client = first.hello.client_id
        if not client:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello.client_id: required")
            return
        if len(client) > MAX_CLIENT_ID:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"hello.client_id: must be at most {MAX_CLIENT_ID} characters",
            )
            return
        log.info("stream opened by %r", client)
        try:
            session = self._engine.open_session(client)
        except SpoolFull as exc:
            # A new client's number could not be stored.
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            return
        outgoing: asyncio.Queue[_Outgoing] = asyncio.Queue(_OUTGOING_LIMIT)
        # One writer (this generator); reading and feeding run beside it.
        tasks = [
            asyncio.create_task(_guarded(self._read(requests, session, outgoing), outgoing)),
            asyncio.create_task(_guarded(self._feed(session, outgoing), outgoing)),
        ]
        observability.OPEN_STREAMS.inc()
        try:
            while True:
                item = await outgoing.get()
                if isinstance(item, _End):
                    if item.code is not None:
                        await context.abort(item.code, item.details)
                    return
                if item.HasField("feedback"):
                    observability.FEEDBACK_BATCHES_SENT.inc()
                    observability.FEEDBACK_EVENTS_SENT.inc(len(item.feedback.events))
                yield item
        finally:
            observability.OPEN_STREAMS.dec()
            for task in tasks:
                task.cancel()
            self._engine.close_session(session)
            await asyncio.gather(*tasks, return_exceptions=True)

    async def SetScenario(
        self,
        request: mta_service_pb2.SetScenarioRequest,
        context: grpc.aio.ServicerContext[
            mta_service_pb2.SetScenarioRequest, mta_service_pb2.SetScenarioResponse
        ],
    ) -> mta_service_pb2.SetScenarioResponse:
        await self._test_control(context, "SetScenario")
        mix = None
        if request.HasField("mix"):
            m = request.mix
            mix = Mix(
                seed=m.seed,
                hard_bounce_rate=m.hard_bounce_rate,
                soft_then_delivered_rate=m.soft_then_delivered_rate,
                soft_until_expiry_rate=m.soft_until_expiry_rate,
                open_rate=m.open_rate,
                click_rate=m.click_rate,
                max_retries=m.max_retries,
            )
            mix = self._mix_extras.apply(mix)
        f = request.faults
        faults = Faults(
            duplicate_events=f.duplicate_events,
            reorder_window=f.reorder_window,
            drop_stream_every=f.drop_stream_every,
            max_delay_ms=f.max_delay_ms,
        )
        try:
            scope = checked_scope(request.delivery_id, request.client_id)
            self._engine.set_scenario(
                mix,
                faults,
                request.retry_interval_ms,
                request.engagement_delay_ms,
                request.hold_feedback,
                scope,
            )
        except ScenarioError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (ScenarioLimitError, SpoolFull) as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return mta_service_pb2.SetScenarioResponse()

    async def ClearScenario(
        self,
        request: mta_service_pb2.ClearScenarioRequest,
        context: grpc.aio.ServicerContext[
            mta_service_pb2.ClearScenarioRequest, mta_service_pb2.ClearScenarioResponse
        ],
    ) -> mta_service_pb2.ClearScenarioResponse:
        await self._test_control(context, "ClearScenario")
        try:
            scope = checked_scope(request.delivery_id, request.client_id)
        except ScenarioError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            cleared = self._engine.clear_scenario(scope)
        except SpoolFull as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return mta_service_pb2.ClearScenarioResponse(cleared=cleared)

    async def GetOutcomes(
        self,
        request: mta_service_pb2.GetOutcomesRequest,
        context: grpc.aio.ServicerContext[
            mta_service_pb2.GetOutcomesRequest, mta_service_pb2.GetOutcomesResponse
        ],
    ) -> mta_service_pb2.GetOutcomesResponse:
        await self._test_control(context, "GetOutcomes")
        if request.delivery_id < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "delivery_id: must not be negative"
            )
        outcomes = dataclasses.asdict(
            self._engine.outcomes(request.delivery_id, request.client_id or None)
        )
        return mta_service_pb2.GetOutcomesResponse(
            **{name: n for name, n in outcomes.items() if name in _OUTCOME_FIELDS}
        )

    async def _test_control(self, context: grpc.aio.ServicerContext[Any, Any], name: str) -> None:
        """Ends the call with UNIMPLEMENTED unless the test controls are on."""
        if not self._test_controls:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{name} is a test control, off on this stub: start it with --test-controls "
                "(or MTA_TEST_CONTROLS=true) to serve it",
            )

    async def _read(
        self,
        requests: AsyncIterator[mta_service_pb2.ExchangeRequest],
        session: Session,
        outgoing: asyncio.Queue[_Outgoing],
    ) -> None:
        try:
            async for request in requests:
                reply = self._handle(request, session)
                if reply is not None:
                    await outgoing.put(reply)
        except BadRequest as exc:
            log.info("stream ended on bad input: %s", exc)
            await outgoing.put(_End(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
            return
        except SpoolFull as exc:
            # Never acknowledge what could not be stored: the stream ends before this
            # batch's ack (the acks of the batches before it go first), and the client
            # relays it again later, on a new stream. Feedback flows on that one.
            if exc.operation == "relay batch":
                observability.REFUSED_SPOOL_FULL.inc()
            log.warning("stream of %r ended: %s", session.client, exc)
            await outgoing.put(_End(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)))
            return
        # The client is done sending: nothing it could acknowledge is left to send.
        await outgoing.put(_End())

    def _handle(
        self, request: mta_service_pb2.ExchangeRequest, session: Session
    ) -> mta_service_pb2.ExchangeResponse | None:
        kind = request.WhichOneof("kind")
        if kind == "relay":
            batch = request.relay
            accepted, duplicates = self._engine.relay(_relayed(batch), session.client)
            observability.MESSAGES_ACCEPTED.inc(accepted)
            observability.MESSAGES_DUPLICATE.inc(duplicates)
            ack = mta_service_pb2.RelayAck(seq=batch.seq, accepted=accepted, duplicates=duplicates)
            return mta_service_pb2.ExchangeResponse(relay_ack=ack)
        if kind == "ack":
            try:
                session.ack(request.ack.seq)
            except AckError as exc:
                raise BadRequest(str(exc)) from exc
            observability.FEEDBACK_ACKS.inc()
            return None
        if kind == "hello":
            raise BadRequest("hello: only the first message of a stream may be a hello")
        raise BadRequest("kind: one of hello, relay or ack is required")

    async def _feed(self, session: Session, outgoing: asyncio.Queue[_Outgoing]) -> None:
        while True:
            batch = await session.next_batch()
            if batch is None:
                reason = (
                    "the MTA stub is shutting down"
                    if self._engine.ending
                    else "stream dropped by the drop_stream_every fault"
                )
                await outgoing.put(_End(grpc.StatusCode.UNAVAILABLE, reason))
                return
            await outgoing.put(_feedback(batch))


async def _guarded(work: Awaitable[None], outgoing: asyncio.Queue[_Outgoing]) -> None:
    """Runs work; a bug in it ends the stream with INTERNAL instead of leaving it hanging."""
    try:
        await work
    except grpc.aio.AbortError:
        # The call is over (the client cancelled it, or it was aborted); the handler ends too.
        log.debug("stream ended while reading")
    except SpoolFull as exc:
        # A row of the outbox cut for a fault could not be written: the batch is not sent.
        log.warning("stream ended: %s", exc)
        await outgoing.put(_End(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)))
    except Exception:
        log.exception("stream failed")
        await outgoing.put(_End(grpc.StatusCode.INTERNAL, "the MTA stub failed; see its log"))


def _relayed(batch: mta_service_pb2.RelayBatch) -> list[Relayed]:
    """The batch's messages, all checked before any is held."""
    count = len(batch.messages)
    if not 1 <= count <= MAX_RELAY_MESSAGES:
        raise BadRequest(f"relay.messages: must hold 1 to {MAX_RELAY_MESSAGES}, not {count}")
    delivery_id = batch.delivery_id
    if delivery_id <= 0:
        raise BadRequest("relay.delivery_id: must be positive")
    if not batch.content.subject:
        raise BadRequest("relay.content.subject: required")
    if not batch.HasField("expire_time"):
        raise BadRequest("relay.expire_time: required")
    expire_at = batch.expire_time.seconds + batch.expire_time.nanos / 1e9
    relayed = [Relayed(m.message_id, delivery_id, m.email, expire_at) for m in batch.messages]
    for index, message in enumerate(relayed):
        if message.message_id <= 0:
            raise BadRequest(f"relay.messages[{index}].message_id: must be positive")
        if not message.email:
            raise BadRequest(f"relay.messages[{index}].email: required")
    return relayed


def _feedback(batch: Batch) -> mta_service_pb2.ExchangeResponse:
    """The batch as a response, filled in place: the cheapest way to build it."""
    response = mta_service_pb2.ExchangeResponse()
    feedback = response.feedback
    feedback.seq = batch.seq
    add = feedback.events.add
    addresses = batch.addresses
    for event in batch.events:
        added = add(
            event_id=event.event_id,
            message_id=event.message_id,
            delivery_id=event.delivery_id,
            kind=_KINDS[event.kind],
            reason=_REASONS[event.reason],
            attempt=event.attempt,
            link_index=event.link_index,
        )
        # Seconds since the epoch are positive: int() is the floor, and the fraction
        # of a float below 2**31 never rounds up to a whole second of nanoseconds.
        seconds = event.event_time
        whole = int(seconds)
        stamp = added.event_time
        stamp.seconds = whole
        stamp.nanos = int((seconds - whole) * 1e9)
        if event.kind in REPLY_KINDS:
            reply = replies.smtp_reply(
                event.kind, event.reason, addresses.get(event.message_id, "")
            )
            if reply is not None:
                smtp = added.smtp_reply
                smtp.code, smtp.enhanced_status, smtp.text = reply
    return response


class App(serving.Service):
    """The stub as serving runs it: the server, and the engine behind the servicer."""

    def __init__(self, server: serving.Server, engine: Engine) -> None:
        self.server = server
        self.engine = engine

    async def start(self) -> None:
        """Starts the scheduler of due events."""
        self.engine.start()

    async def drain(self) -> None:
        """Ends the feedback streams, which would otherwise outlive any grace."""
        self.engine.end_streams()

    async def close(self) -> None:
        """Stops the scheduler and closes the spool."""
        await self.engine.close()


def create_app(settings: Settings) -> App:
    """The stub, not yet bound: the engine on its spool, and the server around it.

    Raises spool.SpoolError if the spool cannot be used.
    """
    spool = Spool(settings.spool or IN_MEMORY)
    if settings.spool:
        held = spool.outcomes(0)
        log.info(
            "spool %s: %d messages accepted, %d in flight, %d events unacknowledged",
            settings.spool,
            held.accepted,
            held.in_flight,
            held.unacknowledged_events,
        )
    engine = Engine(
        Timing(settings.retry_interval_ms / 1000, settings.engagement_delay_ms / 1000),
        spool,
        settings.retention_seconds,
    )
    engine.on_forgotten = observability.MESSAGES_FORGOTTEN.inc
    observability.SPOOL_FULL.set_function(lambda: float(spool.full))
    spool.on_full = lambda operation: observability.SPOOL_FULL_ERRORS.labels(operation).inc()
    server = serving.Server(
        observability.interceptor(), [SERVICE_NAME], settings, max_receive_bytes=MAX_REQUEST_BYTES
    )
    if settings.test_controls:
        log.info("test controls on: SetScenario, ClearScenario and GetOutcomes are served")
    mix_extras = MixExtras.from_json(settings.mix_extras)
    if mix_extras != MixExtras():
        log.info("every mix SetScenario sets gets %s", mix_extras)
    servicer = MtaServicer(engine, settings.test_controls, mix_extras)
    mta_service_pb2_grpc.add_MtaServiceServicer_to_server(servicer, server.grpc)
    return App(server, engine)
