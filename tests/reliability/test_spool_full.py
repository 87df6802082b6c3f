"""The stub's spool on a full disk: its SQLite spool sits on a small tmpfs the test mounts,
and a filler file takes all of it but a little headroom, which the relay fills. The stub
refuses the relay batches it cannot write (the stream ends with RESOURCE_EXHAUSTED before
their ack), the delivery service relays them again by itself, and once the filler is
removed the delivery finishes exact: nothing lost, nothing counted twice."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mta.v1 import mta_service_pb2 as mta

from tests.conftest import Servers
from tests.reliability import scenario
from tests.reliability.test_faults import scrape
from tests.support.processes import wait_until

N = 3000
# What the filesystem holds: the spool of N messages takes a few hundred KiB.
SIZE = "32m"
# Left free by the filler: about one relay batch of 1,000 (each commit appends its pages
# to the WAL, 120 KiB a batch), so the disk fills during the relay, not before it.
HEADROOM = 160 * 1024
REFUSED = 'mta_stub_relay_batches_refused_total{reason="spool_full"}'
# Refusals held before space returns: the service's retries back off (its reconnects
# wait 0.05 s, then twice as long each time), so these span a few seconds.
HELD_REFUSALS = 7


@pytest.fixture
def spool_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SIZE, mounted for the test (skipped where mounting is not allowed)."""
    mount_point = tmp_path / "spool_fs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # After the stub stopped (the servers fixture is torn down first); lazy if it lingers.
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(mount_point: Path, headroom: int, name: str = "filler") -> Path:
    """Fills the filesystem with a file, then gives headroom bytes back."""
    filler = mount_point / name
    chunk = b"\0" * (1 << 20)
    with filler.open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass  # ENOSPC: the disk is full
        size = f.tell()
        f.truncate(max(0, size - headroom))
    return filler


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        status: int = check(health_pb2.HealthCheckRequest(), timeout=10).status
    return status


def test_a_full_spool_refuses_relays_until_space_returns(
    fresh_db_url: str, spool_fs: Path, servers: Servers
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    stub = servers.mta_stub(
        "--spool",
        str(spool_fs / "spool.sqlite3"),
        "--metrics-port",
        str(metrics_port),
        "--retry-interval-ms",
        "200",
        "--engagement-delay-ms",
        "50",
    )
    service = servers.delivery_service(fresh_db_url, stub.address)
    filler = fill(spool_fs, HEADROOM)
    free = os.statvfs(spool_fs)
    print(f"\nspool_full: {free.f_bavail * free.f_frsize} bytes free on the spool's tmpfs")
    started = time.monotonic()
    # 14 s: the relay waits out the full disk (a few seconds), then every report lands
    # inside the validity, as it must for the stub's record to compare.
    delivery_id = scenario.start_delivery(fresh_db_url, service.address, stub.address, N, 14)

    wait_until(lambda: scrape(metrics_port, REFUSED) >= 1, 20, message="a relay batch refused")
    first_refusal = time.monotonic()
    held_at_first = scenario.call_mta(
        stub.address, "GetOutcomes", mta.GetOutcomesRequest(delivery_id=delivery_id)
    ).accepted
    wait_until(
        lambda: scrape(metrics_port, REFUSED) >= HELD_REFUSALS,
        20,
        message=f"{HELD_REFUSALS} relay batches refused",
    )
    assert scrape(metrics_port, "mta_stub_spool_full") == 1
    # The stub is up and answers: health, the test controls, its metrics.
    assert health(stub.address) == health_pb2.HealthCheckResponse.SERVING
    # Read first: a message is marked relayed only after the stub acknowledged it.
    relayed_while_full = scenario.count(fresh_db_url, scenario.RELAYED)
    held = scenario.call_mta(
        stub.address, "GetOutcomes", mta.GetOutcomesRequest(delivery_id=delivery_id)
    )
    assert held.accepted < N, "the relay is held back while the spool is full"
    assert relayed_while_full <= held.accepted, "only what the stub stored is marked relayed"
    # The feedback of what the stub stored goes on: its events reach the database.
    wait_until(
        lambda: scenario.count(fresh_db_url, scenario.EVENTS) > 0,
        20,
        message="feedback applied while the spool is full",
    )
    events_while_full = scenario.count(fresh_db_url, scenario.EVENTS)

    filler.unlink()
    space_back = time.monotonic()
    refused = scrape(metrics_port, REFUSED)
    wait_until(
        lambda: scenario.count(fresh_db_url, scenario.RELAYED) == N,
        20,
        message="every message relayed once there is room",
    )
    resumed = time.monotonic() - space_back
    assert scrape(metrics_port, "mta_stub_spool_full") == 0
    scenario.wait_finished(lambda: service.address, delivery_id)
    outcome = scenario.assert_exact(fresh_db_url, service.address, stub.address, delivery_id, N)
    assert outcome.duplicates == scrape(
        metrics_port, 'mta_stub_relayed_messages_total{result="duplicate"}'
    )
    failed_writes = {
        operation: scrape(
            metrics_port, f'mta_stub_spool_full_errors_total{{operation="{operation}"}}'
        )
        for operation in ("relay batch", "acknowledgement", "scheduled steps")
    }
    print(
        f"spool_full: the disk filled after {held_at_first} of {N} messages were accepted; "
        f"{refused:.0f} relay batches refused (RESOURCE_EXHAUSTED) over "
        f"{space_back - first_refusal:.1f} s full; failed spool writes {failed_writes}; "
        f"{held.accepted} accepted and {events_while_full} feedback events applied while "
        f"full; every message relayed {resumed:.1f} s after "
        f"space returned; {outcome.duplicates} relays sent again and deduplicated; "
        f"delivered {outcome.delivered}, hard {outcome.hard_bounced}, "
        f"expired {outcome.expired}; lost 0, double-counted 0; "
        f"{time.monotonic() - started:.1f} s from the confirmation"
    )
