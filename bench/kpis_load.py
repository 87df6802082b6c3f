"""Workload: GetKpis under many callers at once, against the database answering the same
statement directly.

64 callers (asyncio tasks, a connection each, as 64 clients would have: SO_REUSEPORT
spreads connections, not calls) call GetKpis back to back for 10 s, after 2 s of the same
unmeasured (connections, caches and a newly started process warm), on one delivery, then
each in turn on 1,000 deliveries. The reference is the statement GetKpis runs
(`delivery_figures`), sent by 64 psycopg connections the same way, and pgbench at the
same concurrency (C, prepared statements: the database's own ceiling, with no Python in
the client). The service is measured with one process, then with a second started on
the same port (--reuse-port).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc

from delivery_service import admin
from tools import embedded_pg

CALLERS = 64
CONNECTIONS = 64
SECONDS = 10.0
WARM_UP_SECONDS = 2.0
DELIVERIES = 1000
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Load:
    calls: int
    seconds: float
    latencies_ms: list[float]

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def info(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "seconds": round(self.seconds, 2),
            "calls_per_s": round(self.calls_per_s, 1),
            "p50_ms": round(self.percentile_ms(0.50), 2),
            "p99_ms": round(self.percentile_ms(0.99), 2),
        }


async def _callers(call: Any, ids: Sequence[int], callers: int, seconds: float) -> Load:
    """`callers` tasks each calling `call(k, delivery_id)` back to back for `seconds`, the
    ids taken in turn; every latency kept."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    deadline = loop.time() + seconds

    async def caller(k: int) -> None:
        i = k
        while loop.time() < deadline:
            started = time.perf_counter()
            await call(k, ids[i % len(ids)])
            latencies.append((time.perf_counter() - started) * 1000)
            i += callers

    started = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(callers)))
    return Load(len(latencies), time.perf_counter() - started, latencies)


async def _service(address: str, metadata: Any, ids: Sequence[int], seconds: float) -> Load:
    # A connection each: without a local subchannel pool, channels to one address share one.
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CONNECTIONS)
    ]
    try:
        stubs = [pb_grpc.DeliveryServiceStub(channel) for channel in channels]

        async def call(k: int, delivery_id: int) -> None:
            await stubs[k % CONNECTIONS].GetKpis(
                pb.GetKpisRequest(delivery_id=delivery_id),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )

        await _callers(call, ids, CALLERS, WARM_UP_SECONDS)
        return await _callers(call, ids, CALLERS, seconds)
    finally:
        for channel in channels:
            await channel.close()


async def _direct(url: str, ids: Sequence[int], seconds: float) -> Load:
    connections = [
        await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(CALLERS)
    ]
    try:
        statement = admin.statement("delivery_figures")

        async def call(k: int, delivery_id: int) -> None:
            cursor = await connections[k].execute(statement, {"id": delivery_id}, prepare=True)
            await cursor.fetchone()

        return await _callers(call, ids, CALLERS, seconds)
    finally:
        for connection in connections:
            await connection.close()


def service(address: str, metadata: Any, ids: Sequence[int], seconds: float = SECONDS) -> Load:
    return asyncio.run(_service(address, metadata, ids, seconds))


def direct(url: str, ids: Sequence[int], seconds: float = SECONDS) -> Load:
    return asyncio.run(_direct(url, ids, seconds))


def pgbench(url: str, ids: Sequence[int], seconds: float = SECONDS) -> float:
    """pgbench's transactions per second for the statement, CALLERS clients on 2 threads,
    prepared; the ids drawn at random from their range (consecutive ids)."""
    low, high = min(ids), max(ids)
    if high - low + 1 != len(ids):
        raise ValueError("pgbench draws from a range: the deliveries' ids must be consecutive")
    statement = admin.statement("delivery_figures").replace("%(id)s", ":id")
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "kpis.sql"
        script.write_text(f"\\set id random({low}, {high})\n{statement};\n")
        done = subprocess.run(
            [str(embedded_pg.bin_dir() / "pgbench"), "-n", "-M", "prepared",
             "-c", str(CALLERS), "-j", "2", "-T", str(int(seconds)), "-f", str(script), url],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        )  # fmt: skip
    found = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
    if found is None:
        raise RuntimeError(f"pgbench printed no tps:\n{done.stdout}\n{done.stderr}")
    return float(found.group(1))
