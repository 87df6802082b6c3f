"""An embedded PostgreSQL for development and tests, from the binaries of the pgserver wheel.

    python -m tools.embedded_pg start|stop|restart|uri|status

The server listens on a unix socket in its data directory only (no TCP port, so it never
clashes with a system PostgreSQL) and keeps running after the command that started it
exits, so `make run` and every test session share it; `make db-stop` stops it.

Only the binaries come from pgserver: its `get_server()` caches one handle per data
directory per process (a second start in the same process after a stop would silently
not start), cannot pass server options, and warns on import when XDG_RUNTIME_DIR is
unset. The lifecycle is plain pg_ctl instead, which also makes `restart()` usable from a
test that restarts PostgreSQL under load.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO
from urllib.parse import quote, urlencode

import psycopg.conninfo

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / ".data" / "pg"
AS_USER = Path(__file__).with_name("as_user.py")

# When run as root, PostgreSQL refuses to start; pgserver's convention is a system user
# of this name, so a data directory made by pgserver itself keeps working.
SYSTEM_USER = "pgserver"
SUPERUSER = "postgres"
PORT = 5432

# More than the integration and load tests ever open at once (each service process has
# a pool); shared_buffers keeps the working set of a load test in memory. Durability
# settings (fsync, synchronous_commit, full_page_writes) stay at their safe defaults:
# the reliability tests restart the server and expect committed feedback to survive.
SERVER_SETTINGS: Mapping[str, str] = {
    "max_connections": "300",
    "shared_buffers": "256MB",
}

# Crash recovery after a kill under load can take a while; pg_ctl's default is 60 s.
_PG_CTL_TIMEOUT_S = 120


class EmbeddedPgError(RuntimeError):
    """pg_ctl or initdb failed; the message carries their output and the server log tail."""


def bin_dir() -> Path:
    """The folder of PostgreSQL binaries inside the installed pgserver wheel."""
    # find_spec locates the package without importing it: importing pgserver runs
    # platformdirs at class-definition time, which warns when XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPgError("pgserver is not installed: run `make run` to set up the venv")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def make_url(conninfo: str, **changes: str) -> str:
    """A postgresql:// URI for `conninfo` (a URI or key=value string) with `changes` applied.

    Parsing and rendering go through libpq's own parameter names, so unix-socket hosts,
    passwords and extra options survive; `make_url(url, dbname="x")` swaps the database.
    """
    params = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(conninfo).items()}
    params.update(changes)
    dbname = params.pop("dbname", "")
    user = params.pop("user", "")
    password = params.pop("password", "")
    host = params.pop("host", "")
    port = params.pop("port", "")
    netloc = ""
    if user:
        netloc = quote(user, safe="")
        if password:
            netloc += ":" + quote(password, safe="")
        netloc += "@"
    elif password:
        params["password"] = password
    # A single TCP host goes in the authority; socket directories and host lists go in
    # the query string, where libpq accepts them.
    if host and not host.startswith("/") and "," not in host:
        netloc += f"[{host}]" if ":" in host else host
        if port:
            netloc += f":{port}"
    else:
        if host:
            params["host"] = host
        if port:
            params["port"] = port
    query = ("?" + urlencode(params, safe="/,", quote_via=quote)) if params else ""
    return f"postgresql://{netloc}/{quote(dbname, safe='')}{query}"


def socket_dir(data_dir: Path) -> Path:
    """Where the server puts its socket: the data directory, unless that path is too long."""
    # sun_path holds 107 bytes on Linux (103 on macOS).
    if len(str(data_dir / f".s.PGSQL.{PORT}").encode()) < 100:
        return data_dir
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"embedded-pg-{digest}"


def uri(data_dir: Path = DEFAULT_DATA_DIR, dbname: str = SUPERUSER) -> str:
    """The URI of the server of `data_dir` (whether it runs or not)."""
    data_dir = data_dir.resolve()
    return make_url(
        "", host=str(socket_dir(data_dir)), port=str(PORT), user=SUPERUSER, dbname=dbname
    )


def is_running(data_dir: Path = DEFAULT_DATA_DIR) -> bool:
    data_dir = data_dir.resolve()
    if not (data_dir / "PG_VERSION").exists():
        return False
    # pg_ctl status: 0 running, 3 not running, 4 no usable data directory.
    return _pg_ctl(data_dir, ["status"], check=False).returncode == 0


def start(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """Starts the server of `data_dir` (creating it on first use) and returns its URI.

    Idempotent, and safe to call from several processes at once.
    """
    data_dir = data_dir.resolve()
    with _locked(data_dir):
        if not (data_dir / "PG_VERSION").exists():
            _initdb(data_dir)
        if not is_running(data_dir):
            sock = socket_dir(data_dir)
            sock.mkdir(parents=True, exist_ok=True)
            _give_to_system_user(sock)
            options = ["-h", "", "-k", str(sock), "-p", str(PORT)]
            for name, value in SERVER_SETTINGS.items():
                options += ["-c", f"{name}={value}"]
            _pg_ctl(
                data_dir,
                [
                    "start",
                    "-w",
                    "-t",
                    str(_PG_CTL_TIMEOUT_S),
                    "-l",
                    str(data_dir / "log"),
                    "-o",
                    shlex.join(options),
                ],
            )
    return uri(data_dir)


def stop(data_dir: Path = DEFAULT_DATA_DIR) -> None:
    """Stops the server of `data_dir` (fast mode: open sessions are cut); no-op if stopped."""
    data_dir = data_dir.resolve()
    with _locked(data_dir):
        if is_running(data_dir):
            _pg_ctl(data_dir, ["stop", "-w", "-t", str(_PG_CTL_TIMEOUT_S), "-m", "fast"])


def restart(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """Stops then starts the server; returns its URI (unchanged across restarts)."""
    stop(data_dir)
    return start(data_dir)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    # Serialises start/stop between processes (`make run` beside `make test`).
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(data_dir.parent / f".{data_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _as_root() -> bool:
    return os.geteuid() == 0


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/bin/sh", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _give_to_system_user(path: Path) -> None:
    """As root, hands `path` to the server's user and lets it traverse the path down to it."""
    if not _as_root():
        return
    entry = _ensure_system_user()
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _initdb(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    _give_to_system_user(data_dir)
    _run(
        [
            str(bin_dir() / "initdb"),
            "-D",
            str(data_dir),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            SUPERUSER,
        ],
        data_dir,
    )


def _pg_ctl(
    data_dir: Path, args: list[str], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return _run([str(bin_dir() / "pg_ctl"), "-D", str(data_dir), *args], data_dir, check=check)


def _run(
    command: list[str], data_dir: Path, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    # Output goes to a file, not a pipe: the postmaster pg_ctl forks could inherit a pipe
    # and keep it open, and reading it would then never end.
    with tempfile.TemporaryFile("w+") as out:
        try:
            result = _run_as_server_user(command, data_dir, out)
        except OSError as exc:  # not even started: the binary, the path, its permissions
            raise EmbeddedPgError(_cannot_run(command[0], data_dir, exc)) from None
        out.seek(0)
        result.stdout = out.read()
    if check and result.returncode != 0:
        raise EmbeddedPgError(
            f"{shlex.join(command)} exited with {result.returncode}:\n{result.stdout}"
            f"{_log_tail(data_dir)}"
        )
    return result


def _cannot_run(program: str, data_dir: Path, exc: OSError) -> str:
    """One line on why `program` did not start, and what to do."""
    if _as_root():
        return (
            f"cannot run {program} as the user {SYSTEM_USER} (PostgreSQL refuses root): "
            f"{exc.strerror or exc}; every directory down to it and to {data_dir} must let "
            f"{SYSTEM_USER} through (chmod o+x), or set DATABASE_URL to a PostgreSQL of your own"
        )
    return (
        f"cannot run {program}: {exc.strerror or exc}; reinstall the venv (make clean run), "
        "or set DATABASE_URL to a PostgreSQL of your own"
    )


def _run_as_server_user(
    command: list[str], data_dir: Path, out: IO[str]
) -> subprocess.CompletedProcess[str]:
    """`command` as the server's user when root, its output to `out`; OSError if it could
    not be started."""
    if not _as_root():
        return _spawn(command, data_dir, out)
    # PostgreSQL refuses to run as root. Its group too, and root's others dropped: with
    # root's group, a 0700 root directory on the path (`mktemp -d`) would be denied.
    user = _ensure_system_user()
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as exec_error:
        try:
            launcher = [sys.executable, str(AS_USER), str(user.pw_uid), str(user.pw_gid)]
            result = _spawn([*launcher, str(write_end), *command], data_dir, out, write_end)
        finally:
            os.close(write_end)
        errno = exec_error.read()
    if errno:
        raise OSError(int(errno), os.strerror(int(errno)), command[0])
    return result


def _spawn(
    command: list[str], data_dir: Path, out: IO[str], *pass_fds: int
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        pass_fds=pass_fds,
        # The server's user may not be allowed into the caller's working directory.
        cwd=data_dir,
        # Own session: a Ctrl-C in the terminal of `make run` must not reach the server.
        start_new_session=True,
        check=False,
    )


def _log_tail(data_dir: Path, lines: int = 30) -> str:
    log = data_dir / "log"
    if not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {log}:\n" + "\n".join(tail)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.embedded_pg", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "restart", "uri", "status"])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir
    try:
        if args.command == "start":
            print(start(data_dir))
        elif args.command == "restart":
            print(restart(data_dir))
        elif args.command == "stop":
            stop(data_dir)
        elif args.command == "uri":
            if not is_running(data_dir):
                print("not running: python -m tools.embedded_pg start", file=sys.stderr)
                return 1
            print(uri(data_dir))
        else:
            running = is_running(data_dir)
            print(f"{'running' if running else 'stopped'} {uri(data_dir)}")
            return 0 if running else 3
    except EmbeddedPgError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
