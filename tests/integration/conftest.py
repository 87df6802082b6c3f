"""The pair under test: a delivery service process on a fresh database, the shared MTA stub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from mta.v1 import mta_service_pb2_grpc as mta_grpc

from delivery_service import auth, store
from delivery_service.domain.lifecycle import Role
from tests.conftest import Servers
from tests.support.processes import ServerProcess


@dataclass
class Pair:
    """A running delivery service and its MTA stub, with clients and operator tokens."""

    service: ServerProcess
    stub_process: ServerProcess
    database_url: str
    api: pb_grpc.DeliveryServiceStub
    mta: mta_grpc.MtaServiceStub
    sender: list[tuple[str, str]]
    approver: list[tuple[str, str]]
    nobody: list[tuple[str, str]]

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Reads the database directly: the tests check what was really stored."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(query.encode(), params).fetchall()


async def create_operators(database_url: str) -> dict[str, list[tuple[str, str]]]:
    """Call metadata for three operators: a sender, an approver, and one with no role."""
    db = store.Store(database_url, min_size=1, max_size=1)
    await db.open()
    try:
        roles = {"sender": [Role.START_DELIVERIES], "approver": [Role.APPROVE_DELIVERIES]}
        metadata = {}
        for name in ("sender", "approver", "nobody"):
            token = await auth.create_operator(db, name, roles.get(name, []))
            metadata[name] = [("authorization", f"Bearer {token}")]
        return metadata
    finally:
        await db.close()


async def open_pair(
    service: ServerProcess, stub_process: ServerProcess, database_url: str
) -> AsyncIterator[Pair]:
    operators = await create_operators(database_url)
    async with (
        grpc.aio.insecure_channel(service.address) as channel,
        grpc.aio.insecure_channel(stub_process.address) as mta_channel,
    ):
        yield Pair(
            service=service,
            stub_process=stub_process,
            database_url=database_url,
            api=pb_grpc.DeliveryServiceStub(channel),
            mta=mta_grpc.MtaServiceStub(mta_channel),
            sender=operators["sender"],
            approver=operators["approver"],
            nobody=operators["nobody"],
        )


@pytest.fixture
async def pair(
    fresh_db_url: str,
    start_mta_stub: Callable[..., ServerProcess],
    start_delivery_service: Callable[..., ServerProcess],
) -> AsyncIterator[Pair]:
    # A stub of its own: message ids restart at 1 in every fresh database, and the
    # stub deduplicates by message id.
    stub_process = start_mta_stub("--retry-interval-ms", "100", "--engagement-delay-ms", "50")
    service = start_delivery_service(fresh_db_url, stub_process.address)
    async for p in open_pair(service, stub_process, fresh_db_url):
        yield p


@pytest.fixture(scope="module")
async def module_pair(module_db_url: str, module_servers: Servers) -> AsyncIterator[Pair]:
    """One pair for the tests of a module that only need isolation by delivery."""
    stub_process = module_servers.mta_stub("--retry-interval-ms", "100")
    service = module_servers.delivery_service(module_db_url, stub_process.address)
    async for p in open_pair(service, stub_process, module_db_url):
        yield p
