"""PostgreSQL's disk full during the ingest: the service stops acknowledging feedback,
stays bounded in memory, says why in health and metrics, and once space is freed the
delivery finishes exact: nothing lost, nothing counted twice.

How the disk is made full: the test runs its own embedded server, creates a tablespace
on a small tmpfs it mounts (owned by the server's user; skipped where mounting is
refused) and the service's database in that tablespace, so every table and index of the
service lives on the bounded filesystem while the WAL stays in the data directory. A
filler file takes all the tmpfs's room but some headroom before the delivery, a second
one the rest during the ingest. That is what an operator
sees as "the data disk is full" without a crash: a table or index that cannot grow, ERROR
53100 disk_full ("could not extend file ...: No space left on device"), the transaction
rolled back and the server up. Had the WAL no room, PostgreSQL would PANIC and restart:
that case is a crash, which test_postgres_crash.py covers.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from tests.conftest import Servers
from tests.integration.test_health_port import status
from tests.reliability import scenario
from tests.reliability.feed_exact import assert_feed_exact
from tests.reliability.scenario import EVENTS, RELAYED, count
from tests.reliability.test_faults import scrape
from tests.reliability.test_spool_full import fill
from tests.support import drift
from tests.support.own_postgres import own_postgres
from tests.support.processes import wait_until
from tools import embedded_pg

N = 3000
# The database takes 3 MiB before the delivery: this much is room enough for all of it,
# so that only the fillers make the disk full.
SIZE = "64m"
# Left free by a first filler before the delivery, for its data up to EVENTS_BEFORE; a
# second takes it when the ingest is there (quickly: only this much to write).
HEADROOM = 16 * 1024 * 1024
# The feedback applied before the disk fills: the ingest is well under way.
EVENTS_BEFORE = 1000
# Writes of feedback refused before space returns: each of the ingest's two appliers
# retries after 0.05 s, then twice as long each time up to 2 s, so these span 5 s or so.
HELD_REFUSALS = 14
# Confirmed, a few seconds to the full disk, a few seconds full, then time to catch up:
# every report must land inside the validity for the stub's record to compare.
VALIDITY = 18
# The service's memory while the feedback is held back: its queues are bounded.
RSS_BOUND_KB = 100 * 1024
SERVICE = "delivery.v1.DeliveryService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
REFUSED = "delivery_db_disk_full_errors_total"


@contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of `size`, mounted beside the embedded servers' data (pytest's temporary
    folders are closed to the server's user); skipped where mounting is not allowed."""
    mount_point = embedded_pg.DEFAULT_DATA_DIR.parent / f"fs-full-{secrets.token_hex(4)}"
    mount_point.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # After the server stopped; lazy if something lingers.
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    """The process's largest RSS (KiB) while the block runs, sampled every 0.1 s."""
    peak = [rss_kb(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], rss_kb(pid))

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def refused(metrics_port: int) -> dict[str, float]:
    return {
        flow: scrape(metrics_port, f'{REFUSED}{{flow="{flow}"}}')
        for flow in ("ingest", "relay", "scheduler")
    }


def test_the_database_disk_full_during_ingest(servers: Servers) -> None:
    with tmpfs(SIZE) as fs, own_postgres("database_full", fs / "pg") as (_, url):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            metrics_port = s.getsockname()[1]
        stub = servers.mta_stub("--retry-interval-ms", "200", "--engagement-delay-ms", "50")
        service = servers.delivery_service(
            url, stub.address, "--finalize-grace", "3", "--metrics-port", str(metrics_port)
        )
        rss_start = rss_kb(service.pid)
        stat = os.statvfs(fs)
        used_before = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        fill(fs, HEADROOM, "base")
        started = time.monotonic()
        delivery_id = scenario.start_delivery(url, service.address, stub.address, N, VALIDITY)
        # The relay done first: on a slow host it was still writing when the disk filled,
        # and its writes, not the ingest's, met the full disk.
        wait_until(lambda: count(url, RELAYED) == N, 30, message="every message relayed")
        wait_until(lambda: count(url, EVENTS) >= EVENTS_BEFORE, 30,
                   message=f"{EVENTS_BEFORE} events applied")  # fmt: skip
        with peak_rss(service.pid) as peak:
            filler = fill(fs, 0)
            full_at = time.monotonic()
            applied_at_full = count(url, EVENTS)
            wait_until(lambda: scrape(metrics_port, "delivery_db_disk_full") == 1, 20,
                       message="the ingest's writes refused for lack of space")  # fmt: skip
            applied_at_refusal = count(url, EVENTS)
            # The named services say the service cannot do its work; "" (the process's
            # liveness) stays SERVING: a restart would not free the disk.
            wait_until(lambda: status(service.port, SERVICE) == NOT_SERVING, 10,
                       message="health NOT_SERVING while the disk is full")  # fmt: skip
            assert status(service.port, "") == SERVING
            wait_until(lambda: refused(metrics_port)["ingest"] >= HELD_REFUSALS, 20,
                       message=f"{HELD_REFUSALS} feedback writes refused")  # fmt: skip
            # Nothing acknowledged that was not committed: the stub holds the feedback.
            held = scenario.unacknowledged(stub.address, delivery_id)
            assert held > 0, "feedback acknowledged while the database had no room"
            assert scrape(metrics_port, "delivery_db_disk_full") == 1
            assert status(service.port, SERVICE) == NOT_SERVING
            applied_while_full = count(url, EVENTS) - applied_at_full
            applied_while_refused = count(url, EVENTS) - applied_at_refusal

            filler.unlink()
            space_back = time.monotonic()
            refusals = refused(metrics_port)
            wait_until(lambda: scrape(metrics_port, "delivery_db_disk_full") == 0, 20,
                       message="feedback written again once there is room")  # fmt: skip
            resumed = time.monotonic() - space_back
            wait_until(lambda: status(service.port, SERVICE) == SERVING, 10,
                       message="health SERVING again")  # fmt: skip
            serving_again = time.monotonic() - space_back
        rss_peak = peak[0]
        scenario.wait_finished(lambda: service.address, delivery_id)
        outcome = scenario.assert_exact(url, service.address, stub.address, delivery_id, N)
        wait_until(lambda: scenario.unacknowledged(stub.address, delivery_id) == 0, 30,
                   message="feedback left unacknowledged")  # fmt: skip
        served = assert_feed_exact(url, service.address, delivery_id)
        drift.assert_no_drift([service.log_path])
        assert service.log_path is not None
        log = service.log_path.read_text()
        said = log.count("no room for feedback")
        print(
            f"\ndatabase_full: the database took {used_before / 2**20:.0f} MiB before the "
            f"delivery; the tablespace's tmpfs filled after {applied_at_full} events "
            f"applied; full {space_back - full_at:.1f} s; writes refused {refusals}; "
            f"{applied_while_full} events applied while full (in room the tables had left; "
            f"{applied_while_refused} after the first refusal), {held} held unacknowledged at "
            f"the stub; said {said} times in the log; service RSS {rss_start / 1024:.0f} MiB "
            f"at start, peak {rss_peak / 1024:.0f} MiB; feedback written again "
            f"{resumed:.2f} s and health SERVING {serving_again:.2f} s after space returned; "
            f"delivered {outcome.delivered}, hard {outcome.hard_bounced}, "
            f"expired {outcome.expired}, feed {served} events, each once; lost 0, "
            f"double-counted 0; {time.monotonic() - started:.1f} s from the confirmation"
        )
        assert rss_peak - rss_start < RSS_BOUND_KB, "the held feedback grew the service's memory"
        assert said <= 1 + (space_back - full_at) // 30, "the full disk said once in a while"
