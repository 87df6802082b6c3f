"""Relaying the messages of SENDING deliveries to the MTA, in acknowledged batches.

The sending logs are streamed from the database in message order, a batch at a
time, so a delivery is never held in memory. A message is marked relayed only
after the MTA acknowledged it; after a crash or a broken stream, whatever was
not marked is relayed again and the MTA deduplicates it by message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from google.protobuf import timestamp_pb2
from mta.v1 import mta_service_pb2 as mta

from delivery_service import observability
from delivery_service.domain import feedback as fb
from delivery_service.mta.link import LinkDown, MtaLink
from delivery_service.store import relay as relay_store
from delivery_service.store.connection import Database, DiskFull, Unavailable
from delivery_service.usecases import deliveries

log = logging.getLogger(__name__)


class Relayer:
    def __init__(
        self, db: Database, link: MtaLink, *, batch_size: int = 1000, window: int = 4
    ) -> None:
        self.db = db
        self.link = link
        self.batch_size = batch_size
        # Batches in flight per delivery: keeps the stream busy while acks travel.
        self.window = window
        self._tasks: dict[int, asyncio.Task[None]] = {}

    async def pick_up(self) -> None:
        """Starts relaying every SENDING delivery this process is not relaying yet."""
        for delivery_id in await relay_store.sending_deliveries(self.db):
            task = self._tasks.get(delivery_id)
            if task is None or task.done():
                self._tasks[delivery_id] = asyncio.create_task(
                    self._relay(delivery_id), name=f"relay-{delivery_id}"
                )

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _relay(self, delivery_id: int) -> None:
        try:
            async with relay_store.lease(self.db, delivery_id) as mine:
                if mine:
                    await self._relay_leased(delivery_id)
        except (LinkDown, Unavailable) as exc:
            # pick_up starts it again on its next round.
            if isinstance(exc, DiskFull):
                observability.DB_DISK_FULL_ERRORS.labels("relay").inc()
            log.warning("relay of delivery %d interrupted: %s", delivery_id, exc)
        except Exception:
            # Anything else is a bug or a database refusing: said loudly, and the next
            # round starts the relay again from what was marked relayed.
            log.exception("relay of delivery %d failed", delivery_id)

    async def _relay_leased(self, delivery_id: int) -> None:
        delivery = await deliveries.get(self.db, delivery_id)
        mode = delivery.feedback_mode
        # Sent once per batch, not once per message.
        content = mta.Content(subject=delivery.subject, body=delivery.body, links=delivery.links)
        assert delivery.validity_end_time is not None  # set when the send was confirmed
        expire_time = timestamp_pb2.Timestamp()
        expire_time.FromDatetime(delivery.validity_end_time)
        await self.link.wait_connected()
        in_flight: set[asyncio.Task[None]] = set()
        after = 0
        try:
            while True:
                ids, emails = await relay_store.queued_messages(
                    self.db, delivery_id, after, self.batch_size
                )
                if not ids:
                    break
                request = mta.ExchangeRequest()
                batch = request.relay
                batch.delivery_id = delivery_id
                batch.content.CopyFrom(content)
                batch.expire_time.CopyFrom(expire_time)
                add = batch.messages.add  # in place: the cheapest way to fill a batch
                for message_id, email in zip(ids, emails, strict=True):
                    add(message_id=message_id, email=email)
                while len(in_flight) >= self.window:
                    done, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        task.result()  # a broken stream ends this round
                in_flight.add(
                    asyncio.create_task(self._send(delivery_id, mode, request, after, ids[-1]))
                )
                after = ids[-1]
            await asyncio.gather(*in_flight)
            in_flight = set()
        finally:
            for task in in_flight:
                task.cancel()
        if await relay_store.finish_sending(self.db, delivery_id):
            log.info("delivery %d: every message relayed", delivery_id)

    async def _send(
        self,
        delivery_id: int,
        mode: fb.FeedbackMode,
        request: mta.ExchangeRequest,
        after: int,
        upto: int,
    ) -> None:
        """Relays the queued messages in (after, upto], then marks them relayed."""
        await self.link.relay(request)
        marked = await relay_store.mark_relayed(self.db, delivery_id, mode, after, upto)
        observability.MESSAGES_RELAYED.inc(marked)
        observability.BATCH_SIZE.labels("relay").observe(len(request.relay.messages))
