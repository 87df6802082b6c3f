"""The benchmark's world: the PostgreSQL server, a fresh database per run, the profiles,
the two services as processes, and what the machine and each process cost.

Nothing here is measured: it sets up, starts, stops, and reads /proc.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from bench.sql import q
from delivery_service import admin
from tools import embedded_pg
from tools.pair import Launcher, Pair
from tools.processes import REPO_ROOT, ServerProcess

STARTUP_TIMEOUT_S = 60.0
# The delivery service drains its stream and its pool on SIGTERM.
STOP_TIMEOUT_S = 30.0
# The stub's clock, short so that retries and engagement (open, click) follow within
# a fraction of a second of the first attempt: the ingest then measures the delivery
# service, not the stub's timers.
RETRY_INTERVAL_MS = 50
ENGAGEMENT_DELAY_MS = 10
# Profiles are written in chunks of this many COPY lines.
_COPY_CHUNK = 50_000
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def server_url() -> tuple[str, str]:
    """A URL of the server to use, to connect to for CREATE DATABASE, and where it came from."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return url, "DATABASE_URL"
    return embedded_pg.start(), "embedded (tools.embedded_pg)"


def create_database(server: str, name: str) -> str:
    """A new, empty database on the server with the schema applied; returns its URL."""
    drop_database(server, name)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = embedded_pg.make_url(server, dbname=name)
    admin.migrate(url)
    return url


def drop_database(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        # FORCE: a process killed by an interrupted run may have left a session open.
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def load_profiles(url: str, segment: str, first: int, count: int) -> None:
    """Profiles p<first>..: u<i>@example.com, in one segment, through COPY (set-up only).

    The addresses match none of the stub's patterns, so the seeded mix decides every fate.
    """
    with psycopg.connect(url) as conn, conn.cursor().copy(q("copy_profiles")) as copy:
        for start in range(first, first + count, _COPY_CHUNK):
            end = min(first + count, start + _COPY_CHUNK)
            copy.write(
                "".join(f"p{i}\tu{i}@example.com\t{{{segment}}}\n" for i in range(start, end))
            )


def vacuum(url: str, query: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(q(query))


def count(url: str, query: str, **params: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(q(query), params).fetchone()
    assert row is not None
    value: int = row[0]
    return value


def create_caller(url: str) -> list[tuple[str, str]]:
    """Call metadata for an operator with every role but admin: the bench creates,
    prepares, confirms and reads its deliveries."""
    roles = [role for role in admin.ROLES if role != "admin"]
    token = asyncio.run(admin.create_operator(url, "bench", roles))
    return [("authorization", f"Bearer {token}")]


def start_pair(
    database_url: str,
    log_dir: Path,
    *,
    retry_interval_ms: int = RETRY_INTERVAL_MS,
    service_args: Sequence[str] = (),
    stub_args: Sequence[str] = (),
) -> Pair:
    """Fresh processes with their default settings, but for ports, the stub's clock and logs
    (and `service_args` and `stub_args`, the soak's metrics port and retention).

    Stop it with `pair.stop(STOP_TIMEOUT_S)`.
    """
    stub_clock = ["--retry-interval-ms", str(retry_interval_ms),
                  "--engagement-delay-ms", str(ENGAGEMENT_DELAY_MS)]  # fmt: skip
    launcher = Launcher(log_dir=log_dir, startup_timeout=STARTUP_TIMEOUT_S)
    return launcher.pair(
        database_url, stub_args=[*stub_clock, *stub_args], service_args=service_args
    )


def start_second_service(pair: Pair, database_url: str, log_dir: Path) -> ServerProcess:
    """A second delivery-service process on the pair's database, MTA and port (both with
    --reuse-port: the kernel spreads new connections between them). Stop it with
    `.terminate(STOP_TIMEOUT_S)`."""
    launcher = Launcher(log_dir=log_dir, startup_timeout=STARTUP_TIMEOUT_S)
    return launcher.delivery_service(
        database_url, pair.stub.address, "--reuse-port", port=pair.service.port
    )


def open_fds(pid: int) -> int | None:
    """The process's open file descriptors (entries of /proc/<pid>/fd); None if it is gone."""
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


# --- what processes cost, from /proc ---------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, so far."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # The command name may hold spaces and parentheses: split after its closing one.
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak RSS of the process's life), in kB."""
    found: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return found
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def reset_peak_rss(pid: int) -> bool:
    """Resets the process's VmHWM to its RSS now (Linux 4.0 and later), so that VmHWM is
    then the peak of what follows; False if the kernel did not let us."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _postgres_cpu() -> dict[int, float]:
    """CPU time of every local PostgreSQL process (server and backends), by pid."""
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        times[int(entry.name)] = cpu_seconds(int(entry.name))
    return times


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores, not idle or waiting on I/O)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    machine: float
    service: float
    stub: float
    bench: float
    postgres: dict[int, float]


class CpuMeter:
    """Where the CPU went during a workload: service, stub, PostgreSQL, this benchmark.

    PostgreSQL's share counts only local server processes (not with a remote
    DATABASE_URL), and misses backends that exit during the window.
    """

    def __init__(self, pair: Pair) -> None:
        self.pair = pair

    def snapshot(self) -> CpuSnapshot:
        return CpuSnapshot(
            wall=time.monotonic(),
            machine=machine_busy_seconds(),
            service=cpu_seconds(self.pair.service.pid),
            stub=cpu_seconds(self.pair.stub.pid),
            bench=cpu_seconds(os.getpid()),
            postgres=_postgres_cpu(),
        )

    @staticmethod
    def between(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
        """CPU seconds of each part, and the wall time, between two snapshots."""
        postgres = sum(t - start.postgres.get(pid, 0.0) for pid, t in end.postgres.items())
        ours = {
            "service_cpu_s": end.service - start.service,
            "stub_cpu_s": end.stub - start.stub,
            "postgres_cpu_s": postgres,
            "bench_cpu_s": end.bench - start.bench,
        }
        machine = end.machine - start.machine
        wall = end.wall - start.wall
        return {
            "wall_s": round(wall, 3),
            **{key: round(value, 2) for key, value in ours.items()},
            # Anything else on the machine: other processes disturb the figures.
            "other_cpu_s": round(max(0.0, machine - sum(ours.values())), 2),
            "machine_busy_percent": round(100 * machine / (wall * (os.cpu_count() or 1)), 1),
        }


# --- the record of the machine ---------------------------------------------------------


def machine_info(server: str, where: str) -> dict[str, object]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.partition(":")[2].strip()
            break
    with psycopg.connect(server, autocommit=True) as conn:
        row = conn.execute(q("server_version")).fetchone()
    assert row is not None
    return {
        "nproc": os.cpu_count(),
        "memory_mb": mem_kb // 1024,
        "cpu_model": cpu_model,
        "postgresql": row[1],
        "postgresql_full": row[0],
        "database": where,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_info() -> dict[str, object]:
    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
        return result.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
