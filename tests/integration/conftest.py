"""The pair under test: a delivery service process on a fresh database, the shared MTA stub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from mta.v1 import mta_service_pb2_grpc as mta_grpc

from delivery_service import admin
from tests.conftest import Servers, fresh_database
from tests.support.callers import CALLER_ROLES, bearer, interceptors
from tests.support.processes import ServerProcess


@dataclass
class Pair:
    """A running delivery service and its MTA stub, with clients and operator tokens."""

    service: ServerProcess
    stub_process: ServerProcess
    database_url: str
    api: pb_grpc.DeliveryServiceStub
    # The same service on a channel that adds no token: calls carry only their own.
    anonymous: pb_grpc.DeliveryServiceStub
    mta: mta_grpc.MtaServiceStub
    # Call metadata of operators: `caller` (every role but admin; what `api` sends by
    # default), `sender` (start_deliveries, read_deliveries), `approver`
    # (approve_deliveries), and `nobody` (no role).
    caller: list[tuple[str, str]]
    sender: list[tuple[str, str]]
    approver: list[tuple[str, str]]
    nobody: list[tuple[str, str]]

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Reads the database directly: the tests check what was really stored."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(query.encode(), params).fetchall()


async def create_operators(database_url: str) -> dict[str, list[tuple[str, str]]]:
    """Call metadata for the operators of a Pair (see there)."""
    roles = {
        "caller": CALLER_ROLES,
        "sender": ("start_deliveries", "read_deliveries"),
        "approver": ("approve_deliveries",),
        "nobody": (),
    }
    return {
        name: bearer(await admin.create_operator(database_url, name, granted))
        for name, granted in roles.items()
    }


# (process, the channel's interceptors) -> a channel to it.
ChannelTo = Callable[[ServerProcess, list[Any]], grpc.aio.Channel]


def plaintext(process: ServerProcess, interceptors: list[Any]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(process.address, interceptors=interceptors)


async def open_pair(
    service: ServerProcess,
    stub_process: ServerProcess,
    database_url: str,
    channel_to: ChannelTo = plaintext,
) -> AsyncIterator[Pair]:
    """The pair's clients and operators, for as long as the caller iterates; the
    channels are `channel_to`'s (plaintext, or TLS in tests/security/test_tls.py)."""
    operators = await create_operators(database_url)
    async with (
        channel_to(service, interceptors(operators["caller"])) as channel,
        channel_to(service, []) as bare_channel,
        channel_to(stub_process, []) as mta_channel,
    ):
        yield Pair(
            service=service,
            stub_process=stub_process,
            database_url=database_url,
            api=pb_grpc.DeliveryServiceStub(channel),
            anonymous=pb_grpc.DeliveryServiceStub(bare_channel),
            mta=mta_grpc.MtaServiceStub(mta_channel),
            caller=operators["caller"],
            sender=operators["sender"],
            approver=operators["approver"],
            nobody=operators["nobody"],
        )


@pytest.fixture
async def pair(fresh_db_url: str, servers: Servers) -> AsyncIterator[Pair]:
    # A stub of its own: message ids restart at 1 in every fresh database, and the
    # stub deduplicates by message id.
    stub_args = ("--retry-interval-ms", "100", "--engagement-delay-ms", "50")
    processes = servers.pair(fresh_db_url, stub_args)
    async for p in open_pair(processes.service, processes.stub, fresh_db_url):
        yield p


@pytest.fixture(scope="module")
async def module_pair(module_db_url: str, module_servers: Servers) -> AsyncIterator[Pair]:
    """One pair for the tests of a module that only need isolation by delivery."""
    processes = module_servers.pair(module_db_url, ("--retry-interval-ms", "100"))
    async for p in open_pair(processes.service, processes.stub, module_db_url):
        yield p


@pytest.fixture
def empty_db_url(pg_url: str) -> Iterator[str]:
    """A database with no schema at all (not even the migrations')."""
    with fresh_database(pg_url, "template0") as url:
        yield url
