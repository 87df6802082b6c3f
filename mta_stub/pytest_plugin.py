"""pytest fixtures for testing code against the MTA stub.

Installed with the package as a `pytest11` entry point, so pytest loads it in any project
that installs campaign-delivery; its fixtures do nothing until a test asks for one:

    mta_stub            (session) a running stub: MtaStub (address, controls, ids, relayer())
    mta_stub_scenario   a function that scopes a scenario to a delivery (or a client) for
                        the test; every scenario it set is cleared after the test
    mta_stub_relayer    an Exchange stream of the test's own (a Relayer), closed after it
    mta_stub_pair       (session) a stub and a delivery service on a throwaway embedded
                        PostgreSQL: Pair (service, stub, controls, metadata)

`--mta-stub HOST:PORT` (or MTA_STUB_ADDRESS) makes `mta_stub` use a running stub, started
with --test-controls, instead of starting one: several pytest processes can then share
it, each scoping its scenarios to its own deliveries. The ini option `mta_stub_args`
adds flags to the stub the plugin starts. docs/stub-fixture.md has a complete example.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from mta_stub.testing import Ids, Relayer, ServerProcess, StubControls
from mta_stub.testing_pair import Pair, start_pair

__all__ = ["Ids", "MtaStub", "Pair", "Relayer", "StubControls"]

ADDRESS_VARIABLE = "MTA_STUB_ADDRESS"
# Quick retries and engagement, so that tests wait milliseconds, not seconds.
DEFAULT_ARGS = ("--retry-interval-ms", "100", "--engagement-delay-ms", "20")


@dataclass
class MtaStub:
    """A running stub, as this test session uses it.

    client_id is the session's own (feedback goes to the client that relayed), and ids
    hands out delivery and message ids no other session sharing the stub uses.
    """

    address: str
    controls: StubControls
    client_id: str
    ids: Ids = field(default_factory=Ids)
    process: ServerProcess | None = None
    _relayers: int = 0

    def relayer(self, **options: Any) -> Relayer:
        """A new Exchange stream, as a client of its own (the session's id and a number),
        with this session's ids; close it after use (or use it in a with block)."""
        self._relayers += 1
        return Relayer(self.address, f"{self.client_id}-{self._relayers}", ids=self.ids, **options)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mta-stub", "MTA stub fixtures (mta_stub.pytest_plugin)")
    group.addoption(
        "--mta-stub",
        dest="mta_stub_address",
        metavar="HOST:PORT",
        default=None,
        help=f"use this running MTA stub (with --test-controls) instead of starting one "
        f"(env {ADDRESS_VARIABLE})",
    )
    parser.addini(
        "mta_stub_args",
        type="args",
        default=list(DEFAULT_ARGS),
        help="flags for the MTA stub the mta_stub fixture starts",
    )


@pytest.fixture(scope="session")
def mta_stub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MtaStub]:
    """A running MTA stub for the session: started on a free loopback port with its test
    controls on and stopped at the end, or the one --mta-stub / MTA_STUB_ADDRESS names."""
    address = request.config.getoption("mta_stub_address") or os.environ.get(ADDRESS_VARIABLE, "")
    process = None
    if not address:
        args = request.config.getini("mta_stub_args")
        log = tmp_path_factory.mktemp("mta_stub") / "mta_stub.log"
        process = ServerProcess.start_stub(log, *args)
        address = process.address
    controls = StubControls(address)
    stub = MtaStub(address, controls, f"pytest-{os.getpid()}-{secrets.token_hex(3)}")
    stub.process = process
    try:
        yield stub
    finally:
        controls.close()
        if process is not None:
            process.stop()


@pytest.fixture
def mta_stub_scenario(mta_stub: MtaStub) -> Iterator[Callable[..., None]]:
    """set(delivery_id=..., mix=..., faults=..., ...): StubControls.set_scenario for this
    test; each scope it set is cleared after the test. A delivery's scenario decides its
    messages' fates and timing; faults and hold need a client's scope (client_id=...)."""
    scopes: list[dict[str, Any]] = []

    def set_scenario(**fields: Any) -> None:
        scope = {k: fields[k] for k in ("delivery_id", "client_id") if fields.get(k)}
        if not scope:
            raise ValueError(
                "mta_stub_scenario scopes a scenario: give delivery_id or client_id "
                "(the global scenario is shared by every user of the stub)"
            )
        mta_stub.controls.set_scenario(**fields)
        scopes.append(scope)

    yield set_scenario
    for scope in scopes:
        mta_stub.controls.clear_scenario(**scope)


@pytest.fixture
def mta_stub_relayer(mta_stub: MtaStub) -> Iterator[Relayer]:
    """An Exchange stream of the test's own, acknowledging what it receives."""
    with mta_stub.relayer() as relayer:
        yield relayer


@pytest.fixture(scope="session")
def mta_stub_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """A delivery service and its own MTA stub on a throwaway embedded PostgreSQL, for the
    session; an operator with every role (Pair.metadata)."""
    with start_pair(tmp_path_factory.mktemp("mta_stub_pair")) as pair:
        yield pair
