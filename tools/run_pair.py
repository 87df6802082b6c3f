"""`make run`: PostgreSQL, the MTA stub and the delivery service, until Ctrl-C.

    python -m tools.run_pair                the pair, until Ctrl-C
    python -m tools.run_pair database-url   print the URL of the pair's embedded database

PostgreSQL is DATABASE_URL when set, else the embedded server under ./.data/pg (left
running afterwards; `make db-stop` stops it). Ports: DELIVERY_PORT (50051) and MTA_PORT
(50052). The services' logs go to this terminal; other settings they read from the
environment (LOG_LEVEL, STATS_INTERVAL_SECONDS, ...) pass through.

The first admin: the delivery service gets --bootstrap-token-file .data/admin.token, so
on a database with no admin it creates the operator `admin` with the token that file
holds, or with a new one written there (mode 0600). The banner says what to do with it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Protocol

import psycopg
from psycopg import sql

from tools import embedded_pg
from tools.pair import Launcher, Pair
from tools.processes import REPO_ROOT, ServerProcessError

# Its own database on the embedded server, apart from the maintenance one and the tests'.
DB_NAME = "delivery"
STARTUP_TIMEOUT_S = 60.0
# The delivery service drains its stream to the MTA on SIGTERM before it exits.
STOP_TIMEOUT_S = 15.0
# The first admin's token (see the module's docstring).
ADMIN_TOKEN_FILE = REPO_ROOT / ".data" / "admin.token"
# What the README's tours do: create, prepare, confirm and read deliveries.
TOUR_ROLES = ("create_deliveries", "start_deliveries", "read_deliveries")


class Listening(Protocol):
    """A server as the banner shows it (a ServerProcess is one)."""

    @property
    def address(self) -> str: ...

    @property
    def pid(self) -> int: ...


def banner(
    service: Listening,
    stub: Listening,
    database_url: str,
    *,
    token_file: str,
    has_token: bool,
    campaign: str,
) -> str:
    """What `make run` prints once the pair is up: where each part is, where the admin
    token is (`token_file`, a path as the user types it; `has_token`: whether it exists),
    and the next steps with `campaign`, the CLI's path as the user types it."""
    admin = f'--token "$(cat {shlex.quote(token_file)})"'
    if has_token:
        token = f"{token_file}   (operator `admin`, role admin)"
    else:
        # The database had an admin before: the service wrote no token.
        token = (
            f"none in {token_file}: this database had an admin already; set ADMIN_TOKEN\n"
            "                    to its token, or to that of another made offline:\n"
            f"                    {campaign} operators create root --role admin "
            f"--database-url {shlex.quote(database_url)}"
        )
        admin = '--token "$ADMIN_TOKEN"'
    roles = " ".join(f"--role {r}" for r in TOUR_ROLES)
    bearer = '-H "authorization: Bearer $CAMPAIGN_TOKEN"'
    return f"""
  delivery service  {service.address}   DeliveryService, AdminService (pid {service.pid})
  MTA stub          {stub.address}   MtaService (pid {stub.pid})
  DATABASE_URL      {database_url}
  admin token       {token}

  Next, an operator for the tours, created by the admin (its token is the last line):
    {campaign} {admin} operators create alice \\
        {roles}
    export CAMPAIGN_TOKEN=...   # alice's token
    {campaign} deliveries list

  Talk to it with grpcurl (server reflection is on; it and health need no token):
    grpcurl -plaintext {service.address} list delivery.v1.DeliveryService
    grpcurl -plaintext {service.address} grpc.health.v1.Health/Check
    grpcurl -plaintext {bearer} \\
        {service.address} delivery.v1.DeliveryService/ListDeliveries
    grpcurl -plaintext {bearer} \\
        -d '{{"delivery_id": 1}}' {service.address} delivery.v1.DeliveryService/ConfirmSend

  Ctrl-C stops both services.
"""


def service_args(log_args: list[str]) -> list[str]:
    """The delivery service's flags: the log level, and the first admin's token file."""
    return [*log_args, "--bootstrap-token-file", str(ADMIN_TOKEN_FILE)]


def _embedded_database() -> str:
    """The URL of the `delivery` database on the embedded server, created on first use."""
    server_url = embedded_pg.start()
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
    return embedded_pg.make_url(server_url, dbname=DB_NAME)


def print_database_url() -> int:
    """Prints the URL of the embedded database `make run` uses (for `make demo`)."""
    if not embedded_pg.is_running():
        print(
            "the embedded PostgreSQL is not running: start the pair with `make run`, "
            "or set DATABASE_URL",
            file=sys.stderr,
        )
        return 1
    print(embedded_pg.uri(dbname=DB_NAME))
    return 0


def run() -> int:
    database_url = os.environ.get("DATABASE_URL", "").strip() or _embedded_database()
    delivery_port = os.environ.get("DELIVERY_PORT", "50051")
    mta_port = os.environ.get("MTA_PORT", "50052")
    log_level = os.environ.get("LOG_LEVEL")
    log_args = ["--log-level", log_level] if log_level else []

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Handlers first: a Ctrl-C during start-up must still stop what has started. The
    # children run in their own process groups, so the signal reaches only this process.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    pair: Pair | None = None
    try:
        # If the delivery service does not come up, the stub is stopped there and then.
        pair = Launcher(startup_timeout=STARTUP_TIMEOUT_S).pair(
            database_url,
            stub_args=log_args,
            service_args=service_args(log_args),
            stub_port=mta_port,
            service_port=delivery_port,
        )
        campaign = Path(sys.executable).with_name("campaign")
        text = banner(
            pair.service,
            pair.stub,
            database_url,
            token_file=os.path.relpath(ADMIN_TOKEN_FILE),
            has_token=ADMIN_TOKEN_FILE.exists(),
            campaign=shlex.quote(os.path.relpath(campaign)),
        )
        print(text, flush=True)

        # Wake up now and then to notice a child that died on its own.
        while not stop.wait(0.5):
            for process in pair.processes:
                if not process.running:
                    print(
                        f"{process.name} exited with {process.returncode}; stopping",
                        file=sys.stderr,
                    )
                    return 1
        return 0
    except (ServerProcessError, TimeoutError) as err:
        print(f"start-up failed: {err}", file=sys.stderr)
        return 1
    finally:
        if pair is not None:
            pair.stop(STOP_TIMEOUT_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.run_pair",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=["run", "database-url"], default="run")
    args = parser.parse_args(argv)
    return print_database_url() if args.command == "database-url" else run()


if __name__ == "__main__":
    sys.exit(main())
