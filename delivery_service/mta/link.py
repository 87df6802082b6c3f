"""The one bidirectional stream to the MTA: relay batches out, feedback in.

The link reconnects by itself. A relay batch is done only once the MTA has
acknowledged it; if the stream breaks first, the batch fails with LinkDown and
the relay sends it again (the MTA deduplicates by message id). Feedback batches
are handed to the ingest (mta/ingest.py) as they arrive, each with the stream that
carried it: a batch is acknowledged on that stream once committed, and what was
not acknowledged when a stream breaks, the MTA sends again on the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc

from delivery_service import observability
from grpc_common import serving

log = logging.getLogger(__name__)

# The largest FeedbackBatch taken from the MTA: 10,000 events (the ingest's largest batch;
# the stub sends 500) of at most 200 bytes each on the wire (an event id of up to 128
# bytes, 130 with its tag and length; two int64 ids, 11 each; kind and reason, 2 each;
# attempt and link index, 11 each; a Timestamp, 19; the event's own tag and length, 3)
# is 2,000,000 bytes. Twice that, gRPC's default of 4 MiB, leaves room for an MTA with
# longer ids; larger batches break the stream (RESOURCE_EXHAUSTED) before they are parsed.
MAX_FEEDBACK_BYTES = 4 * 1024 * 1024
# The largest RelayBatch sent: what the MTA stub takes (10,000 messages and the largest
# content; mta_stub.server). The relay sends 1,000 messages a batch, at most 5.3 MB.
MAX_RELAY_BYTES = 8 * 1024 * 1024
# A stream that lived this long before it broke was a good connection: the reconnect
# backoff starts again from its shortest wait.
STREAM_SETTLED_SECONDS = 1.0


class LinkDown(Exception):
    """The stream broke before the MTA acknowledged a batch."""


class _Stream:
    """One open Exchange call, with the relay batches waiting for their acks."""

    def __init__(self, call: grpc.aio.StreamStreamCall[mta.ExchangeRequest, mta.ExchangeResponse]):
        self.call = call
        self.write_lock = asyncio.Lock()
        self.next_seq = 1
        self.pending: dict[int, asyncio.Future[mta.RelayAck]] = {}
        self.closed = False

    async def write(self, request: mta.ExchangeRequest) -> None:
        # grpc.aio allows one write at a time per call.
        async with self.write_lock:
            if self.closed:
                raise LinkDown("the stream to the MTA is closed")
            try:
                await self.call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
                raise LinkDown(f"writing to the MTA failed: {exc}") from exc

    def fail(self, reason: str) -> None:
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(LinkDown(reason))
        self.pending.clear()


@dataclass(frozen=True)
class ReceivedFeedback:
    """A feedback batch with the stream that carried it: a seq means nothing on another."""

    batch: mta.FeedbackBatch
    stream: _Stream
    # When it arrived (time.monotonic): how long its deferred events have waited.
    received_at: float = field(default_factory=time.monotonic)

    @property
    def live(self) -> bool:
        """False once its stream broke: the MTA sends the batch again on the next one."""
        return not self.stream.closed

    async def acknowledge(self) -> None:
        """Tells the MTA the batch is committed (nothing to do if the stream broke)."""
        with contextlib.suppress(LinkDown):
            await self.stream.write(mta.ExchangeRequest(ack=mta.FeedbackAck(seq=self.batch.seq)))

    def abandon(self, reason: str) -> None:
        """Breaks the stream: the MTA sends its unacknowledged feedback again after the
        reconnect, so the batch is not lost."""
        self.stream.fail(reason)
        self.stream.call.cancel()


FeedbackHandler = Callable[[ReceivedFeedback], Awaitable[None]]


class MtaLink:
    def __init__(
        self,
        address: str,
        on_feedback: FeedbackHandler,
        *,
        client_id: str = "delivery-service",
        reconnect_max_delay: float = 2.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.address = address
        # TLS to the MTA (with a client certificate: mutual TLS); None: plaintext.
        self.credentials = credentials
        # Waits while the ingest is full: reading the stream stops, and the MTA's window
        # of unacknowledged batches holds the rest back.
        self.on_feedback = on_feedback
        self.client_id = client_id
        self.reconnect_max_delay = reconnect_max_delay
        self._stream: _Stream | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        # The monotonic time the current stream opened; None while there is none.
        self.opened_at: float | None = None

    @property
    def connected(self) -> bool:
        return self._stream is not None and not self._stream.closed

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def relay(self, request: mta.ExchangeRequest) -> mta.RelayAck:
        """Sends one relay batch (its seq is set here); returns the MTA's acknowledgement,
        or raises LinkDown."""
        stream = self._stream
        if stream is None or stream.closed:
            raise LinkDown("not connected to the MTA")
        seq = stream.next_seq
        stream.next_seq += 1
        future: asyncio.Future[mta.RelayAck] = asyncio.get_running_loop().create_future()
        stream.pending[seq] = future
        request.relay.seq = seq
        try:
            # Shielded: a relay task cancelled mid-write must not cancel the whole call.
            await asyncio.shield(stream.write(request))
        except BaseException:
            stream.pending.pop(seq, None)
            raise
        return await future

    async def run(self) -> None:
        """Keeps a stream open until stop(); reconnects with backoff."""
        delay = 0.05
        while not self._stopping:
            opened = time.monotonic()
            try:
                async with self._channel() as channel:
                    stub = mta_grpc.MtaServiceStub(channel)
                    await self._serve(stub)
            except asyncio.CancelledError:
                # A cancelled call surfaces as CancelledError from read(); only our own
                # cancellation (stop) may end the loop.
                task = asyncio.current_task()
                if self._stopping or (task is not None and task.cancelling()):
                    raise
                log.warning("MTA stream lost: the call was cancelled")
            except (grpc.aio.AioRpcError, LinkDown) as exc:
                if self._stopping:
                    break
                log.warning("MTA stream lost: %s", _describe(exc))
            if self._stopping:
                break
            observability.STREAM_RECONNECTS.inc()
            # A stream ends only by an error: the backoff grows while streams fail at once.
            if time.monotonic() - opened >= STREAM_SETTLED_SECONDS:
                delay = 0.05
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.reconnect_max_delay)

    def _channel(self) -> grpc.aio.Channel:
        options = [
            ("grpc.max_receive_message_length", MAX_FEEDBACK_BYTES),
            ("grpc.max_send_message_length", MAX_RELAY_BYTES),
            # Pings as often as the MTA's server allows (grpc_common.serving): a dead MTA
            # is noticed within seconds, and a live one never answers too_many_pings.
            *serving.CLIENT_KEEPALIVE_OPTIONS,
        ]
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.address, options=options)
        return grpc.aio.secure_channel(self.address, self.credentials, options=options)

    async def _serve(self, stub: mta_grpc.MtaServiceStub) -> None:
        call = stub.Exchange()
        stream = _Stream(call)
        # What the relay batches waiting for their acks are failed with: the MTA's status
        # when it ended the stream (RESOURCE_EXHAUSTED from an MTA whose spool is full).
        reason = "the stream to the MTA broke"
        try:
            await stream.write(mta.ExchangeRequest(hello=mta.Hello(client_id=self.client_id)))
            self._stream = stream
            self.opened_at = time.monotonic()
            self._connected.set()
            log.info("connected to the MTA at %s", self.address)
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise LinkDown("the MTA closed the stream")
                kind = response.WhichOneof("kind")
                if kind == "relay_ack":
                    future = stream.pending.pop(response.relay_ack.seq, None)
                    if future is not None and not future.done():
                        future.set_result(response.relay_ack)
                elif kind == "feedback":
                    await self.on_feedback(ReceivedFeedback(response.feedback, stream))
        except grpc.aio.AioRpcError as exc:
            reason = f"the stream to the MTA broke: {_describe(exc)}"
            raise
        finally:
            self._connected.clear()
            stream.fail(reason)
            if self._stream is stream:
                self._stream = None
                self.opened_at = None
            call.cancel()

    async def stop(self) -> None:
        """Stops reconnecting and closes the stream (the ingest has drained first)."""
        self._stopping = True
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(LinkDown):
                async with stream.write_lock:
                    await stream.call.done_writing()
            stream.call.cancel()


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
