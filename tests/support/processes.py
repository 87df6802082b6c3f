"""Process and waiting helpers for tests: the servers as subprocesses, and polls with deadlines.

The process code itself lives in tools.processes (and tools.pair, which starts the
servers for `make run`, the benchmark and tests/conftest.py); tests import it from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from tools.processes import (
    ServerProcess,
    ServerProcessError,
    wait_until,
)

__all__ = [
    "ServerProcess",
    "ServerProcessError",
    "StartDeliveryService",
    "StartMtaStub",
    "await_until",
    "create_operator",
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


def create_operator(database_url: str, name: str, *roles: str) -> str:
    """Creates an operator through the service's admin surface; returns its token.

    For synchronous tests; an async one awaits `admin.create_operator` itself.
    """
    # Imported here, like tests/conftest.py's migrations: collecting must not need it.
    from delivery_service import admin

    return asyncio.run(admin.create_operator(database_url, name, roles))


class StartMtaStub(Protocol):
    """The `start_mta_stub` fixture: extra flags for `python -m mta_stub`."""

    def __call__(self, *args: str) -> ServerProcess: ...


class StartDeliveryService(Protocol):
    """The `start_delivery_service` fixture: a database, the MTA, extra flags."""

    def __call__(self, database_url: str, mta_address: str, *args: str) -> ServerProcess: ...
