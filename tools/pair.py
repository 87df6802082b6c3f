"""The pair: the MTA stub and the delivery service, each a process of its own, started the
one way that `make run`, the benchmark and the test fixtures share.

A server is started with `python -m <module> --host H --port P ...`, its port read back
from its listening line, and waited on until grpc.health.v1 says SERVING. A pair is the
stub first, then the delivery service pointed at it; it stops in the reverse order,
since the delivery service may still be relaying to the stub. With a PairTls, both serve
mutual TLS and the link between them is mutual TLS too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.processes import ClientTls, ServerProcess

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Pair:
    """A running MTA stub and the delivery service that relays to it."""

    stub: ServerProcess
    service: ServerProcess

    @property
    def processes(self) -> tuple[ServerProcess, ServerProcess]:
        """Both processes, in the order they started."""
        return (self.stub, self.service)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to each (the delivery service first), SIGKILL after `timeout` s."""
        self.service.terminate(timeout)
        self.stub.terminate(timeout)


@dataclass(frozen=True)
class PairTls:
    """Certificates (PEM files) for a pair over mutual TLS, one CA for all: both servers
    serve `server_cert` and take only clients whose certificate the CA signed; the
    delivery service's link to the stub, and the pair's callers, present `client_cert`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @property
    def client(self) -> ClientTls:
        """How the pair's callers reach either server."""
        return ClientTls(self.ca, self.client_cert, self.client_key)

    def server_args(self) -> tuple[str, ...]:
        """Either server's flags: serve TLS, require a client certificate."""
        return (
            *("--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key)),
            *("--tls-client-ca", str(self.ca)),
        )

    def link_args(self) -> tuple[str, ...]:
        """The delivery service's flags for its link to the stub: mutual TLS."""
        return (
            *("--mta-ca", str(self.ca)),
            *("--mta-client-cert", str(self.client_cert), "--mta-client-key", str(self.client_key)),
        )


@dataclass(frozen=True)
class Launcher:
    """How servers are started: the interface they listen on, where their logs go, and
    how long each may take to become healthy.

    With `log_dir`, a server's stderr and stdout go to a log file there; without, stderr
    is the caller's and stdout lines are echoed to the caller's stdout. With `tls`, every
    server serves mutual TLS and the delivery service reaches the stub over mutual TLS.
    """

    host: str = HOST
    log_dir: Path | None = None
    startup_timeout: float = 30.0
    tls: PairTls | None = None

    def mta_stub(self, *args: str, port: int | str = 0) -> ServerProcess:
        """`python -m mta_stub --test-controls`, SERVING; `args` after --host, --port and
        --test-controls, so they win (`--no-test-controls` turns them off).

        The test controls (SetScenario, ClearScenario, GetOutcomes) are on: every caller
        (`make run` and its demo, the benchmark, the tests) drives the stub's scenarios.
        """
        return self._start("mta_stub", ("--test-controls", *self._tls_args(), *args), port)

    def delivery_service(
        self, database_url: str, mta_address: str, *args: str, port: int | str = 0
    ) -> ServerProcess:
        """`python -m delivery_service` on a database, relaying to `mta_address`, SERVING."""
        flags = ("--mta-address", mta_address, "--database-url", database_url)
        link = self.tls.link_args() if self.tls else ()
        return self._start("delivery_service", (*flags, *self._tls_args(), *link, *args), port)

    def pair(
        self,
        database_url: str,
        *,
        stub_args: Sequence[str] = (),
        service_args: Sequence[str] = (),
        stub_port: int | str = 0,
        service_port: int | str = 0,
    ) -> Pair:
        """The stub, then the delivery service on `database_url` pointed at it.

        If the delivery service does not come up, the stub is stopped before the error
        goes on: nothing is left running.
        """
        stub = self.mta_stub(*stub_args, port=stub_port)
        try:
            service = self.delivery_service(
                database_url, stub.address, *service_args, port=service_port
            )
        except BaseException:
            stub.terminate()
            raise
        return Pair(stub, service)

    def _tls_args(self) -> tuple[str, ...]:
        return self.tls.server_args() if self.tls else ()

    def _start(self, module: str, args: Sequence[str], port: int | str) -> ServerProcess:
        process = ServerProcess.start(
            module,
            ["--host", self.host, "--port", str(port), *args],
            log_dir=self.log_dir,
            startup_timeout=self.startup_timeout,
            tls=self.tls.client if self.tls else None,
        )
        try:
            process.wait_healthy(self.startup_timeout)
        except BaseException:
            process.kill()
            raise
        return process
