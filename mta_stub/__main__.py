"""Runs the MTA stub: `python -m mta_stub --help`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from grpc_common import observability
from mta_stub.config import Settings, parse_settings
from mta_stub.server import create_server
from mta_stub.spool import SpoolError

log = logging.getLogger("mta_stub")


async def serve(settings: Settings) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully."""
    if settings.metrics_port:
        # First: a busy metrics port then fails the start before anything needs closing.
        observability.serve_metrics(settings.metrics_port, settings.host)
    _server, port, app = await create_server(settings)
    await app.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # The one line on stdout: whoever started the stub reads the port from it.
    print(f"listening on {settings.host}:{port}", flush=True)
    await stopping.wait()
    log.info("shutting down, grace %.1f s", settings.grace_seconds)
    await app.stop(settings.grace_seconds)
    log.info("stopped")


def main() -> int:
    settings = parse_settings(sys.argv[1:], os.environ)
    observability.setup_logging(settings.log_level, settings.log_json)
    # gRPC's own debug output is about its internals, not the stub's behaviour.
    logging.getLogger("grpc").setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        asyncio.run(serve(settings))
    except (OSError, SpoolError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
