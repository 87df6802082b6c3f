"""`make run`: PostgreSQL, the MTA stub and the delivery service, until Ctrl-C.

    python -m tools.run_pair                the pair, until Ctrl-C
    python -m tools.run_pair database-url   print the URL of the pair's embedded database

PostgreSQL is DATABASE_URL when set, else the embedded server under ./.data/pg (left
running afterwards; `make db-stop` stops it). Ports: DELIVERY_PORT (50051) and MTA_PORT
(50052). The services' logs go to this terminal; other settings they read from the
environment (LOG_LEVEL, STATS_INTERVAL_SECONDS, ...) pass through.

One at a time on the same ports: a second `make run` finds them taken, says which pair
holds them (pid and addresses, from .data/run_pair-<pid>.json) and exits 1 before it starts
anything. Any number of SIGINT or SIGTERM, at any moment, stop the pair once.

The first admin: the delivery service gets --bootstrap-token-file .data/admin.token, so
on a database with no admin it creates the operator `admin` with the token that file
holds, or with a new one written there (mode 0600). The banner says what to do with it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import select
import shlex
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Protocol

import psycopg
from psycopg import sql

from tools import embedded_pg
from tools.pair import HOST, Launcher, Pair
from tools.processes import REPO_ROOT, ServerProcessError

# Its own database on the embedded server, apart from the maintenance one and the tests'.
DB_NAME = "delivery"
STARTUP_TIMEOUT_S = 60.0
# The delivery service drains its stream to the MTA on SIGTERM before it exits.
STOP_TIMEOUT_S = 15.0
# The first admin's token (see the module's docstring).
ADMIN_TOKEN_FILE = REPO_ROOT / ".data" / "admin.token"
# Where each running `make run` says what it runs (run_pair-<pid>.json), for a second
# one to say which holds its ports.
RUNNING_DIR = REPO_ROOT / ".data"
# What the tours of the README and docs/cli.md do: import profiles, create, approve,
# confirm and read deliveries, refresh their figures.
TOUR_ROLES = (
    "manage_profiles",
    "create_deliveries",
    "approve_deliveries",
    "start_deliveries",
    "read_deliveries",
    "compute_stats",
)


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
    metrics_ports: tuple[str, str] = ("", ""),
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
    # The README's command, word for word (tests/integration/test_docs_tour.py compares).
    roles = " \\\n        ".join(
        " ".join(f"--role {r}" for r in TOUR_ROLES[i : i + 3]) for i in range(0, len(TOUR_ROLES), 3)
    )
    bearer = '-H "authorization: Bearer $CAMPAIGN_TOKEN"'
    service_metrics, stub_metrics = (
        f"http://127.0.0.1:{port}/metrics" if port and port != "0" else "off"
        for port in metrics_ports
    )
    return f"""
  delivery service  {service.address}   DeliveryService, AdminService (pid {service.pid})
  MTA stub          {stub.address}   MtaService (pid {stub.pid})
  DATABASE_URL      {database_url}
  admin token       {token}
  metrics           service {service_metrics}, stub {stub_metrics}
                    (METRICS_PORT and MTA_METRICS_PORT before make run turn them on)
  settings          flags or variables: .venv/bin/python -m delivery_service --help,
                    .venv/bin/python -m mta_stub --help (README: Configuration)
  a demo delivery   make demo   (in another terminal: 3,000 recipients, live KPIs)

  Next, an operator for the tours (README and docs/cli.md), created by the admin:
    export CAMPAIGN_TOKEN=$({campaign} {admin} --json \\
        operators create alice {roles} | jq -r .token)
    {campaign} deliveries list

  Talk to it with grpcurl (server reflection is on; it and health need no token):
    grpcurl -plaintext {service.address} list delivery.v1.DeliveryService
    grpcurl -plaintext {service.address} grpc.health.v1.Health/Check
    grpcurl -plaintext {bearer} \\
        {service.address} delivery.v1.DeliveryService/ListDeliveries
    (the README's API tour creates, prepares and confirms a delivery of its own)

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


class StopSignals:
    """SIGINT and SIGTERM as a flag that any number of signals, at any moment, can raise.

    No Python code of ours runs in a handler: the interpreter's own C handler writes the
    signal's number to a pipe (signal.set_wakeup_fd) and the Python handler does nothing.
    A threading.Event set from a handler deadlocked when a second SIGTERM landed inside
    the first set() (make forwards the signal it got, so a signal to the process group,
    from `timeout` or a CI cancellation, arrives twice).
    """

    def __init__(self) -> None:
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _ignore)
        self.received = False

    def wait(self, timeout: float) -> bool:
        """Whether a stop was asked, waiting up to `timeout` s for one."""
        if not self.received:
            ready, _, _ = select.select([self._read], [], [], timeout)
            self.received = bool(ready)
        return self.received


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python side of a stop signal: nothing (the pipe has it already)."""


def _port_taken(port: str) -> bool:
    if not port.isdigit() or port == "0":  # any free one, or one the launcher refuses
        return False
    with socket.socket() as probe:
        # Connections of a stopped pair lingering in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, int(port)))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _running_file(pid: int) -> Path:
    return RUNNING_DIR / f"run_pair-{pid}.json"


def already_running(ports: dict[str, str]) -> str:
    """Why the pair cannot start on `ports` (name of the setting: port), or "" if it can:
    another `make run` holds them (its pid and addresses said), or another program."""
    taken = {port: name for name, port in ports.items() if _port_taken(port)}
    if not taken:
        return ""
    for path in RUNNING_DIR.glob("run_pair-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            running = json.loads(path.read_text("utf-8"))
            addresses = (running["delivery"], running["mta"])
            if any(a.rpartition(":")[2] in taken for a in addresses):
                os.kill(running["pid"], 0)  # still there?
                return (
                    f"make run is already running (pid {running['pid']}): delivery service "
                    f"{addresses[0]}, MTA stub {addresses[1]}.\nStop it (Ctrl-C in its "
                    f"terminal, or kill {running['pid']}), or run this one on other ports: "
                    "DELIVERY_PORT=... MTA_PORT=... make run"
                )
    in_use = " and ".join(f"{port} ({name})" for port, name in taken.items())
    return (
        f"port {in_use} in use by another program.\n"
        "Stop it, or choose other ports: DELIVERY_PORT=... MTA_PORT=... make run"
    )


def run() -> int:
    delivery_port = os.environ.get("DELIVERY_PORT", "50051")
    mta_port = os.environ.get("MTA_PORT", "50052")
    ports = {"DELIVERY_PORT": delivery_port, "MTA_PORT": mta_port}
    # Before anything starts: a second `make run` says so, not the stub's bind error.
    if reason := already_running(ports):
        print(reason, file=sys.stderr)
        return 1
    # Handlers before anything starts: a Ctrl-C during start-up must still stop what has
    # started. The children run in their own process groups: only this process gets it.
    stop = StopSignals()
    try:
        database_url = os.environ.get("DATABASE_URL", "").strip() or _embedded_database()
    except (embedded_pg.EmbeddedPgError, psycopg.Error) as err:
        print(f"the embedded PostgreSQL did not start: {err}", file=sys.stderr)
        return 1
    log_level = os.environ.get("LOG_LEVEL")
    log_args = ["--log-level", log_level] if log_level else []

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
            metrics_ports=(
                os.environ.get("METRICS_PORT", ""),
                os.environ.get("MTA_METRICS_PORT", ""),
            ),
        )
        running = {"pid": os.getpid(), "delivery": pair.service.address, "mta": pair.stub.address}
        RUNNING_DIR.mkdir(parents=True, exist_ok=True)
        _running_file(os.getpid()).write_text(json.dumps(running), "utf-8")
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
            _running_file(os.getpid()).unlink(missing_ok=True)


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
