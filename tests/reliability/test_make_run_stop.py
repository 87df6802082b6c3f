"""`make run` (python -m tools.run_pair) as a terminal, `timeout` or a CI cancellation
treat it: two SIGTERMs to its process group stop it every time, with nothing left
running; a second one on the same ports says which is running and starts nothing.

The pairs run on free ports against one database that has an admin already, so the
first admin's bootstrap leaves .data/admin.token alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.test_health_port import free_port
from tests.support.processes import create_operator, wait_until
from tools import embedded_pg
from tools.processes import REPO_ROOT, child_env

# Each run starts a whole pair: 12 runs keep the suite within its 10 minutes on 2 cores.
RUNS = 12
# Pairs starting at once: start-up is mostly imports, so more would only queue for the CPU.
AT_ONCE = 3
BANNER_END = "Ctrl-C stops"
STARTUP_S = 60.0
# A stop drains the delivery service's stream, then the stub: a few seconds at most.
STOP_S = 20.0


class MakeRun:
    """`python -m tools.run_pair` in a process group of its own, its output kept."""

    def __init__(self, database_url: str, delivery_port: int = 0, mta_port: int = 0) -> None:
        env = {
            "DATABASE_URL": database_url,
            "DELIVERY_PORT": str(delivery_port),
            "MTA_PORT": str(mta_port),
        }
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tools.run_pair"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(env),
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout:
            for line in self.popen.stdout:
                self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_up(self) -> None:
        wait_until(
            lambda: BANNER_END in self.output or self.popen.poll() is not None,
            STARTUP_S,
            message=lambda: f"no banner:\n{self.output}",
        )
        assert self.popen.poll() is None, self.output

    def children(self) -> list[int]:
        """The processes it started (the stub and the delivery service)."""
        return [pid for pid, parent in _parents() if parent == self.popen.pid]

    def finish(self, timeout: float) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(5.0)
        return code


def _parents() -> Iterator[tuple[int, int]]:
    """(pid, parent pid) of every live process."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The fields after the command's name, which is in parentheses.
                state, parent = (entry / "stat").read_text().rpartition(")")[2].split()[:2]
            except (OSError, ValueError):
                continue
            if state != "Z":
                yield int(entry.name), int(parent)


def _alive(pid: int) -> bool:
    return any(p == pid for p, _ in _parents())


@pytest.fixture(scope="module")
def run_db_url(module_db_url: str) -> str:
    create_operator(module_db_url, "admin", "admin")
    return module_db_url


def stop_twice(database_url: str) -> float:
    """Starts make run, sends two SIGTERMs to its process group; returns how long it
    took to exit, after checking that it exited 0 and left nothing running."""
    run = MakeRun(database_url)
    try:
        run.wait_up()
        children = run.children()
        assert len(children) == 2, run.output
        start = time.monotonic()
        os.killpg(run.popen.pid, signal.SIGTERM)
        os.killpg(run.popen.pid, signal.SIGTERM)
        code = run.finish(STOP_S)
        took = time.monotonic() - start
    finally:
        if run.popen.poll() is None:
            os.killpg(run.popen.pid, signal.SIGKILL)
    assert code == 0, run.output
    left = [pid for pid in children if _alive(pid)]
    assert not left, f"left running: {left}\n{run.output}"
    return took


def test_two_sigterms_to_the_group_stop_it_every_time(run_db_url: str) -> None:
    start = time.monotonic()
    with ThreadPoolExecutor(AT_ONCE) as pool:
        stops = list(pool.map(stop_twice, [run_db_url] * RUNS))
    print(
        f"\nmake run stopped by two SIGTERMs {len(stops)} times of {RUNS}: "
        f"slowest stop {max(stops):.2f} s, {time.monotonic() - start:.1f} s in all"
    )


def test_a_second_make_run_says_which_is_running(run_db_url: str) -> None:
    ports = (free_port(), free_port())
    first = MakeRun(run_db_url, *ports)
    try:
        first.wait_up()
        second = MakeRun(run_db_url, *ports)
        assert second.finish(STARTUP_S) == 1
        said = second.output
        assert f"make run is already running (pid {first.popen.pid})" in said, said
        assert f"127.0.0.1:{ports[0]}" in said and f"127.0.0.1:{ports[1]}" in said, said
        # Nothing was started: no server's log, no gRPC error, no start-up failure.
        assert said.count("\n") == 2, said
        assert first.popen.poll() is None
    finally:
        os.killpg(first.popen.pid, signal.SIGTERM)
        assert first.finish(STOP_S) == 0, first.output
    assert not list((REPO_ROOT / ".data").glob(f"run_pair-{first.popen.pid}.json"))


def test_a_start_that_fails_says_why_once(run_db_url: str) -> None:
    """A delivery service that cannot start (no such database) is said in its own log
    lines, then in one line of make run's, with nothing left running."""
    missing = embedded_pg.make_url(run_db_url, dbname="no_such_database")
    run = MakeRun(missing)
    assert run.finish(STARTUP_S) == 1, run.output
    said = run.output
    assert 'database "no_such_database" does not exist' in said, said
    assert "start-up failed: delivery_service pid" in said, said
    assert "its output is above" in said and "not captured" not in said, said
    assert not run.children()
