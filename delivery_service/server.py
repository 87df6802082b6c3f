"""Wiring: the database pool, the MTA link and the background rounds, behind the gRPC
server that grpc_common.serving builds and runs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from pathlib import Path

from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import address_service_pb2_grpc as adpb_grpc
from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import admin_service_pb2_grpc as apb_grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc

from delivery_service import authorization, observability, validation
from delivery_service.api import AddressServicer, DeliveryServicer
from delivery_service.api.admin import AdminServicer
from delivery_service.authorization import AuthorizationInterceptor
from delivery_service.config import Settings
from delivery_service.mta.ingest import FeedbackIngest
from delivery_service.mta.link import MtaLink
from delivery_service.mta.relay import Relayer
from delivery_service.scheduler import Scheduler
from delivery_service.store import ingest, migrations
from delivery_service.store.connection import Database
from delivery_service.usecases import operators
from grpc_common import serving

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DeliveryService"].full_name
ADMIN_SERVICE_NAME = apb.DESCRIPTOR.services_by_name["AdminService"].full_name
ADDRESS_SERVICE_NAME = adpb.DESCRIPTOR.services_by_name["AddressService"].full_name


class App(serving.Service):
    """The delivery service as grpc_common.serving runs it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.database_url, max_size=settings.pool_size)
        rules = settings.address_rules()
        self.ingest = FeedbackIngest(
            functools.partial(ingest.apply_feedback, self.db, rules=rules),
            defer=settings.feedback_defer,
            on_health=functools.partial(self._health, "database space"),
        )
        self.link = MtaLink(
            settings.mta_address, self.ingest.receive, credentials=settings.mta_credentials()
        )
        self.relayer = Relayer(self.db, self.link)
        self.scheduler = Scheduler(
            self.db,
            self.relayer,
            tick=settings.tick,
            stats_interval=settings.stats_interval,
            finalize_grace=settings.finalize_grace,
            address_rules=rules,
            address_cleanup_interval=settings.address_cleanup_interval,
            alert_rules=settings.alert_rules(),
            alert_interval=settings.alert_interval,
            feed_retention_beyond_validity=settings.feed_retention_beyond_validity,
            sending_log_retention_beyond_validity=settings.sending_log_retention_beyond_validity,
            feed_cleanup_interval=settings.feed_cleanup_interval,
            on_health=functools.partial(self._health, "scheduler rounds"),
        )
        self.server = serving.Server(
            observability.interceptor(),
            [SERVICE_NAME, ADMIN_SERVICE_NAME, ADDRESS_SERVICE_NAME],
            settings,
            max_receive_bytes=validation.MAX_REQUEST_BYTES,
            then=[AuthorizationInterceptor(self.db, authorization.DELIVERY_SERVICE)],
            reuse_port=settings.reuse_port,
        )
        pb_grpc.add_DeliveryServiceServicer_to_server(
            DeliveryServicer(self.db, rules), self.server.grpc
        )
        apb_grpc.add_AdminServiceServicer_to_server(AdminServicer(self.db), self.server.grpc)
        adpb_grpc.add_AddressServiceServicer_to_server(
            AddressServicer(self.db, rules), self.server.grpc
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # What health depends on, and whether each is well: SERVING only while all are.
        self._healthy = {"database": True, "scheduler rounds": True, "database space": True}

    async def start(self) -> None:
        """Once the port is bound: the schema, the pool, the background work."""
        if self.settings.migrate:  # off: applied beforehand by the schema's owner
            applied = await asyncio.to_thread(migrations.apply, self.settings.database_url)
            if applied:
                log.info("migrations applied: %s", ", ".join(applied))
        await self.db.open()
        if self.settings.bootstrap_token_file:
            await operators.bootstrap(self.db, Path(self.settings.bootstrap_token_file))
        if self.settings.metrics_port:
            self._pool_gauges()
        self._tasks = {
            name: asyncio.create_task(work, name=name)
            for name, work in (
                ("mta-link", self.link.run()),
                ("feedback-ingest", self.ingest.run()),
                ("scheduler", self.scheduler.run()),
                ("database-probe", self.db.watch(functools.partial(self._health, "database"))),
            )
        }

    async def _health(self, part: str, healthy: bool) -> None:
        """Health follows the database and the background rounds: a service that cannot
        reach its database, whose database has no room for feedback, or whose rounds keep
        failing (no expiry, no relays started), is not serving, whatever its RPCs do."""
        self._healthy[part] = healthy
        await self.server.set_health(all(self._healthy.values()))

    def _pool_gauges(self) -> None:
        stats = self.db.stats
        gauge = observability.POOL_CONNECTIONS
        gauge.labels("size").set_function(lambda: stats().get("pool_size", 0))
        gauge.labels("idle").set_function(lambda: stats().get("pool_available", 0))
        gauge.labels("waiting").set_function(lambda: stats().get("requests_waiting", 0))

    async def close(self) -> None:
        """Once the server has stopped: the background work, then the pool."""
        # No new round starts a relay or finishes a validity while the rest stops.
        self._tasks["scheduler"].cancel()
        await self.relayer.stop()
        # Committed feedback is acknowledged before the stream closes.
        await self.ingest.drain(5.0)
        await self.link.stop()
        for task in self._tasks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.db.close()
