"""A throwaway pair for tests of code that calls the delivery service: a PostgreSQL of its
own (the pgserver package's binaries, in a temporary directory, deleted afterwards), an
MTA stub with its test controls on, and a delivery service relaying to it.

    with start_pair(log_dir) as pair:
        pair.service.address, pair.metadata, pair.controls.set_scenario(delivery_id=...)

The delivery service is run as `python -m delivery_service`; its operator comes from
delivery_service.admin, its public admin surface. Both are imported only when a pair
starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import secrets
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mta_stub.testing import ServerProcess, StubControls

# Quick retries and engagement, KPI rounds and end of validity: tests wait on them.
STUB_ARGS = ("--retry-interval-ms", "100", "--engagement-delay-ms", "20")
SERVICE_ARGS = ("--stats-interval", "1", "--finalize-grace", "1")
# The client id the delivery service's stream gives (its scope in SetScenario).
SERVICE_CLIENT_ID = "delivery-service"


@dataclass
class Pair:
    """A running stub and delivery service, and an operator who holds every role."""

    stub: ServerProcess
    service: ServerProcess
    database_url: str
    token: str
    controls: StubControls

    @property
    def metadata(self) -> list[tuple[str, str]]:
        """Call metadata carrying the operator's token."""
        return [("authorization", f"Bearer {self.token}")]


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    """A PostgreSQL server in a temporary directory, for as long as the with block; its URL."""
    with warnings.catch_warnings():
        # pgserver warns at import when XDG_RUNTIME_DIR is unset, and uses deprecated APIs.
        warnings.simplefilter("ignore")
        from pgserver import postgres_server

    data = Path(tempfile.mkdtemp(prefix="mta-stub-pg-"))
    server: Any = postgres_server.get_server(data, cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@contextlib.contextmanager
def start_pair(
    log_dir: Path,
    *,
    stub_args: Sequence[str] = STUB_ARGS,
    service_args: Sequence[str] = SERVICE_ARGS,
    database_url: str | None = None,
) -> Iterator[Pair]:
    """The pair on an embedded PostgreSQL (or database_url), stopped after the with block."""
    with contextlib.ExitStack() as stack:
        url = database_url or stack.enter_context(embedded_postgres())
        stub = ServerProcess.start_stub(log_dir / "mta_stub.log", *stub_args)
        stack.callback(stub.stop)
        service = ServerProcess.start(
            "delivery_service",
            ["--database-url", url, "--mta-address", stub.address, *service_args],
            log_dir / "delivery_service.log",
        )
        # The service first: it may still be relaying to the stub.
        stack.callback(service.stop)
        from delivery_service import admin

        name = f"stub-fixture-{secrets.token_hex(4)}"
        # In a thread of its own: the caller may be running an event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            token = pool.submit(asyncio.run, admin.create_operator(url, name, admin.ROLES)).result()
        controls = StubControls(stub.address)
        stack.callback(controls.close)
        yield Pair(stub, service, url, token, controls)
