"""How both servers run: the gRPC server they are built on, and the process around it.

`Server` is a grpc.aio server with what every server of ours has: the shared
observability interceptor, the message-size limits, the keepalive policy, the caps on
calls and streams, TLS when it has a certificate, health and reflection. `Service`
is a server's application (servicer, pool, background work) as `serve()` drives it;
`run()` is a server's whole `main()` after its settings are parsed.

serve() is the lifecycle: the metrics endpoint, the app, the port, the app's start,
SERVING, then the one line on stdout, `listening on host:port` (with --log-json, a JSON
line whose "message" it is), which whoever started the process reads the port from. On
SIGTERM or SIGINT it drains: health NOT_SERVING, the app ends its endless calls, calls in
progress get the grace, then the app closes.

TLS lives here for both servers: with a certificate and key a server serves TLS only, and
with a client CA too it takes only clients whose certificate that CA signed (mutual TLS).
Without a certificate it serves plaintext, which the settings allow only on a loopback
address or with --insecure (and then it says so in a warning at start).
`channel_credentials()` is the client side, for the service's link to the MTA, the CLI
and the tests.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grpc_common import clock, observability
from grpc_common.settings import ServerSettings, is_loopback

log = logging.getLogger(__name__)

# The largest message either server sends, and so what its clients should accept. What a
# server receives is sized by each to its largest legitimate request (Server's
# max_receive_bytes): that is the one that keeps a caller from making it parse anything.
MAX_SEND_BYTES = 64 * 1024 * 1024

# The keepalive policy of both servers, and what their clients must match.
#
# A server pings each connection KEEPALIVE_TIME after the last ping and closes it when the
# ping is not acknowledged within KEEPALIVE_TIMEOUT: a peer that is frozen or cut off is
# gone within 6 s, and its calls are cancelled (the stub then sends that stream's
# unacknowledged feedback again on the next one). gRPC's default is 2 hours.
KEEPALIVE_TIME_MS = 3_000
KEEPALIVE_TIMEOUT_MS = 3_000
# A client may ping at most this often while no data flows; a client pinging faster gets a
# strike, and the third strike closes its connection with GOAWAY too_many_pings (the
# default minimum is 5 minutes: the link's former 10 s pings were closed that way).
MIN_CLIENT_PING_INTERVAL_MS = 5_000
# What our own clients ping at: twice that minimum, so timer slack never makes a strike.
CLIENT_KEEPALIVE_TIME_MS = 2 * MIN_CLIENT_PING_INTERVAL_MS
# A connection without calls for 5 minutes is closed; any connection is asked to go away
# after an hour (clients reconnect for new calls: a certificate or address rotation takes
# effect), and its calls get 10 minutes more before they are cut.
MAX_CONNECTION_IDLE_MS = 5 * 60_000
MAX_CONNECTION_AGE_MS = 60 * 60_000
MAX_CONNECTION_AGE_GRACE_MS = 10 * 60_000

KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # The keepalive ping waits for its ack as any ping does: 1 minute by default.
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Keep pinging a connection on which nothing else is sent (the default stops at 2).
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
    ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
    ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
)
# The client side of that policy: the link to the MTA, the CLI, the tools.
CLIENT_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
)

_HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _read(path: str) -> bytes:
    """A PEM file's bytes; OSError names the file."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise OSError(f"cannot read {path}: {exc.strerror or exc}") from exc


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """The server's TLS from its settings' files; None for plaintext.

    Raises OSError if a file cannot be read.
    """
    if not settings.tls_cert:
        return None
    pair = (_read(settings.tls_key), _read(settings.tls_cert))
    client_ca = _read(settings.tls_client_ca) if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """A client's TLS: the server's certificate checked against the CA bundle in `ca`, and
    with `cert` and `key` (PEM files) a client certificate for mutual TLS.

    Raises OSError if a file cannot be read.
    """
    chain = _read(cert) if cert else None
    private_key = _read(key) if key else None
    return grpc.ssl_channel_credentials(_read(ca), private_key, chain)


class Server:
    """A grpc.aio server with the interceptor, message limits, keepalive, the caps, health
    and reflection, serving TLS when its settings have a certificate.

    Register the servicers on `grpc`; `services` are their full names, for health
    and reflection. Health says NOT_SERVING until start() is done. `max_receive_bytes` is
    the largest request the server takes (larger: RESOURCE_EXHAUSTED, unread). Without
    `settings` (a test's own server), plaintext and no caps. With `reuse_port`, processes
    started alike share the port (SO_REUSEPORT).

    Raises OSError if a TLS file cannot be read.
    """

    def __init__(
        self,
        interceptor: observability.ObservabilityInterceptor,
        services: Sequence[str],
        settings: ServerSettings | None = None,
        *,
        max_receive_bytes: int = MAX_SEND_BYTES,
        then: Sequence[grpc.aio.ServerInterceptor] = (),
        reuse_port: bool = False,
    ) -> None:
        self.credentials = server_credentials(settings) if settings else None
        if settings:
            interceptor.cap_streams(settings.max_streams)
        # The request id and the RPC's log line first, then `then` (authorization).
        self.grpc: grpc.aio.Server = grpc.aio.server(
            interceptors=[interceptor, *then],
            options=[
                ("grpc.max_receive_message_length", max_receive_bytes),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                *KEEPALIVE_OPTIONS,
                # A second server on a busy port must fail, not share the port with the
                # first, unless both are meant to (`reuse_port`: processes of one service).
                ("grpc.so_reuseport", int(reuse_port)),
            ],
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs if settings else None,
        )
        self.health = health.aio.HealthServicer()
        self._health_only: grpc.aio.Server | None = None
        self._services = ("", *services)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (*services, _HEALTH_SERVICE, reflection.SERVICE_NAME), self.grpc
        )

    def bind(self, host: str, port: int) -> int:
        """Binds host:port (port 0: a free one), with TLS if the server has a certificate,
        and returns the port.

        Raises OSError if it cannot be bound.
        """
        address = (
            f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        )
        try:
            if self.credentials is not None:
                bound: int = self.grpc.add_secure_port(address, self.credentials)
            else:
                bound = self.grpc.add_insecure_port(address)
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

    async def serve_health(self, host: str, port: int) -> int:
        """Serves the same health service, alone and in plaintext, on host:port: for
        probes that speak no TLS. Returns the port; stopped with the server."""
        self._health_only = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_only)
        address = (
            f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        )
        try:
            bound: int = self._health_only.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        await self._health_only.start()
        return bound

    async def stop(self, grace: float) -> None:
        """Stops taking calls; those in progress get `grace` seconds."""
        await self.grpc.stop(grace)
        if self._health_only is not None:
            await self._health_only.stop(0)

    async def set_health(self, serving: bool) -> None:
        """SERVING or NOT_SERVING for the named services (ignored once draining). The
        process's own entry, "", stays as it is: it says the process is alive (a
        liveness probe), the named ones whether it should take calls (readiness)."""
        status = health_pb2.HealthCheckResponse.SERVING
        if not serving:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for service in self._services:
            if service:
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
    if app.server.credentials is None and not is_loopback(settings.host):
        # Only --insecure lets the settings through to here.
        log.warning(
            "serving PLAINTEXT on %s:%d (--insecure): tokens and addresses cross the network "
            "in clear; give --tls-cert and --tls-key to serve TLS",
            settings.host,
            port,
        )
    await app.start()
    await app.server.start()
    if settings.health_port:
        health_port = await app.server.serve_health(settings.host, settings.health_port)
        log.info("health alone, in plaintext, on %s:%d", settings.host, health_port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # The one line on stdout: whoever started the server reads the port from it (in JSON
    # mode from a JSON line's "message").
    listening = f"listening on {settings.host}:{port}"
    print(observability.stdout_line(listening, settings.log_json, log.name), flush=True)
    await stopping.wait()
    log.info("shutting down, grace %.1f s", settings.grace)
    # NOT_SERVING from here on, while calls in progress finish.
    await app.server.health.enter_graceful_shutdown()
    await app.drain()
    await app.server.stop(settings.grace)
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
    clock.follow(settings.clock_offset_file)
    # gRPC's own debug output is about its internals, not the server's behaviour.
    logging.getLogger("grpc").setLevel(max(logging.INFO, logging.getLogger().level))
    failures: tuple[type[Exception], ...] = (OSError, *errors)
    try:
        asyncio.run(serve(settings, create))
    except failures as exc:
        log.error("%s", exc)
        return 1
    return 0
