"""Process and waiting helpers for tests: the servers as subprocesses, and polls with deadlines.

The process code itself lives in tools.processes, which `make run` uses too; tests
import it from here.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from tools.processes import (
    REPO_ROOT,
    ServerProcess,
    ServerProcessError,
    child_env,
    wait_until,
)

__all__ = [
    "ServerProcess",
    "ServerProcessError",
    "StartDeliveryService",
    "StartMtaStub",
    "await_until",
    "create_operator",
    "run_module",
    "wait_until",
]

T = TypeVar("T")


async def await_until(
    predicate: Callable[[], Awaitable[T]],
    timeout: float,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Awaits `predicate()` until it returns something truthy, and returns that.

    The async twin of wait_until: TimeoutError with `message` after `timeout` seconds,
    even when a call hangs; exceptions of the types in `ignore` count as "not yet".
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: BaseException | None = None
    while True:
        budget = asyncio.timeout(max(deadline - loop.time(), 0.001))
        try:
            async with budget:
                result = await predicate()
        except TimeoutError as err:
            # The predicate's own TimeoutError is a failure unless the caller ignores it;
            # this helper's budget running out is just the end of the wait.
            if not budget.expired() and not isinstance(err, ignore):
                raise
            last_error = err
        except ignore as err:
            last_error = err
        else:
            if result:
                return result
        remaining = deadline - loop.time()
        if remaining <= 0:
            text = message() if callable(message) else message
            raise TimeoutError(f"{text} (after {timeout:g} s)") from last_error
        await asyncio.sleep(min(interval, remaining))


def run_module(module: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Runs `python -m module *args` to completion; fails with its output if it fails."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"python -m {module} {' '.join(args)} exited with {result.returncode} "
            f"after {time.monotonic() - started:.1f} s\n"
            f"--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}"
        )
    return result


def create_operator(database_url: str, name: str, *roles: str) -> str:
    """Creates an operator through the CLI and returns its token (the last stdout line)."""
    role_args = [arg for role in roles for arg in ("--role", role)]
    result = run_module(
        "delivery_service",
        "create-operator",
        name,
        *role_args,
        "--database-url",
        database_url,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"create-operator printed no token; stderr:\n{result.stderr}"
    return lines[-1].strip()


class StartMtaStub(Protocol):
    """The `start_mta_stub` fixture: extra flags for `python -m mta_stub`."""

    def __call__(
        self, *args: str, healthy: bool = True, startup_timeout: float = 30.0
    ) -> ServerProcess: ...


class StartDeliveryService(Protocol):
    """The `start_delivery_service` fixture: a database, the MTA, extra flags."""

    def __call__(
        self,
        database_url: str,
        mta_address: str,
        *args: str,
        healthy: bool = True,
        startup_timeout: float = 30.0,
    ) -> ServerProcess: ...
