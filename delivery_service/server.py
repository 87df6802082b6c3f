"""Wiring: the gRPC server, the database pool, the MTA link and the background rounds."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from delivery_service import migrations, observability, store
from delivery_service.api import DeliveryServicer
from delivery_service.config import Settings
from delivery_service.feedback import FeedbackIngest
from delivery_service.mta_link import MtaLink
from delivery_service.relay import Relayer
from delivery_service.scheduler import Scheduler
from grpc_common import observability as shared

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DeliveryService"].full_name


class App:
    """The running delivery service."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = store.Store(settings.database_url, max_size=settings.pool_size)
        self.ingest = FeedbackIngest(self.db)
        self.link = MtaLink(settings.mta_address, self.ingest)
        self.relayer = Relayer(self.db, self.link)
        self.scheduler = Scheduler(
            self.db,
            self.relayer,
            tick=settings.tick,
            stats_interval=settings.stats_interval,
            finalize_grace=settings.finalize_grace,
        )
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[observability.interceptor()],
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        pb_grpc.add_DeliveryServiceServicer_to_server(DeliveryServicer(self.db), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        applied = await asyncio.to_thread(migrations.apply, self.settings.database_url)
        if applied:
            log.info("migrations applied: %s", ", ".join(applied))
        await self.db.open()
        if self.settings.metrics_port:
            self._serve_metrics()
        self.port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        await self.server.start()
        self._tasks = [
            asyncio.create_task(self.link.run(), name="mta-link"),
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
        ]
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def _serve_metrics(self) -> None:
        stats = self.db.pool.get_stats
        gauge = observability.POOL_CONNECTIONS
        gauge.labels("size").set_function(lambda: stats().get("pool_size", 0))
        gauge.labels("idle").set_function(lambda: stats().get("pool_available", 0))
        gauge.labels("waiting").set_function(lambda: stats().get("requests_waiting", 0))
        shared.serve_metrics(self.settings.metrics_port, self.settings.host)

    async def stop(self) -> None:
        """Drains: NOT_SERVING first, then in-flight calls finish within the grace."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace)
        self._tasks[1].cancel()
        await self.relayer.stop()
        await self.link.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.db.close()
