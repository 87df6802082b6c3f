"""How both servers run: the gRPC server they are built on, and the process around it.

`Server` is a grpc.aio server with what every server of ours has: the shared
observability interceptor, the message-size limits, health and reflection. `Service`
is a server's application (servicer, pool, background work) as `serve()` drives it;
`run()` is a server's whole `main()` after its settings are parsed.

serve() is the lifecycle: the metrics endpoint, the app, the port, the app's start,
SERVING, then the one line on stdout, `listening on host:port`, which whoever
started the process reads the port from. On SIGTERM or SIGINT it drains: health
NOT_SERVING, the app ends its endless calls, calls in progress get the grace, then
the app closes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grpc_common import observability
from grpc_common.settings import ServerSettings

log = logging.getLogger(__name__)

# The largest message either server receives or sends, and either's clients should
# allow: a relay batch of 10,000 addresses with a 1 MiB body is some 4 MiB, gRPC's
# default, with no room to spare.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MESSAGE_SIZE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)

_HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class Server:
    """A grpc.aio server with the interceptor, message limits, health and reflection.

    Register the servicers on `grpc`; `services` are their full names, for health
    and reflection. Health says NOT_SERVING until start() is done.
    """

    def __init__(
        self,
        interceptor: observability.ObservabilityInterceptor,
        services: Sequence[str],
        *,
        then: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        # The request id and the RPC's log line first, then `then` (authorization).
        self.grpc: grpc.aio.Server = grpc.aio.server(
            interceptors=[interceptor, *then],
            options=[
                *MESSAGE_SIZE_OPTIONS,
                # A second server on a busy port must fail, not share the port with the first.
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        self._services = ("", *services)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (*services, _HEALTH_SERVICE, reflection.SERVICE_NAME), self.grpc
        )

    def bind(self, host: str, port: int) -> int:
        """Binds host:port (port 0: a free one) and returns the port.

        Raises OSError if it cannot be bound.
        """
        address = (
            f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        )
        try:
            bound: int = self.grpc.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        return bound

    async def start(self) -> None:
        """Takes calls, and health says SERVING."""
        # The aio servicer says SERVING for "" from the outset: not before the calls work.
        for service in self._services:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.start()
        for service in self._services:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def set_health(self, serving: bool) -> None:
        """SERVING or NOT_SERVING for every service (ignored once draining)."""
        status = health_pb2.HealthCheckResponse.SERVING
        if not serving:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for service in self._services:
            await self.health.set(service, status)


class Service:
    """A server's application as serve() drives it: its Server and three steps."""

    server: Server

    async def start(self) -> None:
        """Called once the port is bound, before the server takes calls: open what the
        calls need, start the background work."""

    async def drain(self) -> None:
        """Called once health says NOT_SERVING, before calls in progress get their grace:
        end the calls that would never end on their own (long-lived streams)."""

    async def close(self) -> None:
        """Called once the server has stopped: stop the background work, close the rest."""


async def serve(settings: ServerSettings, create: Callable[[], Service]) -> None:
    """Serves the app `create()` returns until SIGTERM or SIGINT, then shuts down gracefully.

    Raises OSError if the port or the metrics port cannot be bound, or what the app's
    construction or start raises; the app is not closed then: the process is ending.
    """
    if settings.metrics_port:
        # First: a busy metrics port then fails the start before anything needs closing.
        observability.serve_metrics(settings.metrics_port, settings.host)
    app = create()
    port = app.server.bind(settings.host, settings.port)
    await app.start()
    await app.server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # The one line on stdout: whoever started the server reads the port from it.
    print(f"listening on {settings.host}:{port}", flush=True)
    await stopping.wait()
    log.info("shutting down, grace %.1f s", settings.grace)
    # NOT_SERVING from here on, while calls in progress finish.
    await app.server.health.enter_graceful_shutdown()
    await app.drain()
    await app.server.grpc.stop(settings.grace)
    await app.close()
    log.info("stopped")


def run(
    settings: ServerSettings,
    create: Callable[[], Service],
    errors: tuple[type[Exception], ...] = (),
) -> int:
    """A server's main(): logging, then serve(); returns the exit code.

    A start that fails with OSError or one of `errors` is one log line and exit code 1.
    """
    observability.setup_logging(settings.log_level, settings.log_json)
    # gRPC's own debug output is about its internals, not the server's behaviour.
    logging.getLogger("grpc").setLevel(max(logging.INFO, logging.getLogger().level))
    failures: tuple[type[Exception], ...] = (OSError, *errors)
    try:
        asyncio.run(serve(settings, create))
    except failures as exc:
        log.error("%s", exc)
        return 1
    return 0
