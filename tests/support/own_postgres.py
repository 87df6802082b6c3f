"""An embedded PostgreSQL of a test's own, for tests that stop or restart it (whatever
DATABASE_URL says: the suite's shared server must keep running)."""

from __future__ import annotations

import ctypes
import os
import pwd
import secrets
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from delivery_service import admin
from tools import embedded_pg


def crash(data_dir: Path) -> int:
    """Kills the server of `data_dir` as a power cut would: SIGKILL to the postmaster and
    every backend at once, nothing flushed, no shutdown checkpoint; its next start runs
    crash recovery. The server must have been started under `reaping_orphans`. Returns
    how many processes were killed."""
    # The backends go first, before they can see the postmaster gone.
    pids = _server_pids(data_dir)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    # Reaped, or pg_ctl would take the zombie postmaster for a running server; the
    # postmaster first: its backends become this process's children once it is gone.
    for pid in reversed(pids):
        os.waitpid(pid, 0)
    return len(pids)


@contextmanager
def frozen(data_dir: Path) -> Iterator[None]:
    """The server of `data_dir` unreachable while the block runs, as behind a network
    partition: the postmaster and every backend stopped (SIGSTOP), so connections and
    statements get no answer at all (not a refusal) until they are continued."""
    pids = _server_pids(data_dir)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@contextmanager
def reaping_orphans() -> Iterator[None]:
    """Makes this process the reaper of its orphaned descendants (Linux): a server pg_ctl
    starts, and its backends once the postmaster is killed, become its children, for
    `crash` to reap (not every container's init reaps them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


_PR_SET_CHILD_SUBREAPER = 36


def _server_pids(data_dir: Path) -> list[int]:
    """Every backend of the server of `data_dir`, then its postmaster, which is stopped
    (SIGSTOP) first: it cannot fork a new backend after the listing, nor react to what
    is done to its backends. Each backend is a session leader of its own (PostgreSQL
    calls setsid in every child): there is no process group to signal."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    return [*_children(postmaster), postmaster]


def _children(parent: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The fields after the command's name, which may hold spaces: state, ppid, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def _give_to_server(folder: Path) -> None:
    """Makes `folder`, owned by the server's user (as root the server runs as its system
    user; a tablespace's folder must be the server's own)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(embedded_pg.SYSTEM_USER)
        os.chown(folder, entry.pw_uid, entry.pw_gid)


@contextmanager
def own_postgres(dbname: str, tablespace: Path | None = None) -> Iterator[tuple[Path, str]]:
    """A server with one migrated database `dbname`: yields the server's data directory
    (for embedded_pg.stop/start/restart) and the database's URL; stopped and removed
    afterwards. With `tablespace` (a folder made there if need be, which the server's user
    must be able to reach), the database is created in a tablespace there: its tables and
    indexes live in that folder, the WAL stays in the data directory."""
    # Beside the shared server's data: pytest's own temporary folders are closed to the
    # system user the server runs as.
    data_dir = embedded_pg.DEFAULT_DATA_DIR.parent / f"pg-{dbname}-{secrets.token_hex(4)}"
    server_url = embedded_pg.start(data_dir)
    try:
        with psycopg.connect(server_url, autocommit=True) as conn:
            if tablespace is None:
                conn.execute(f'CREATE DATABASE "{dbname}"'.encode())
            else:
                _give_to_server(tablespace)
                conn.execute(f"CREATE TABLESPACE \"{dbname}\" LOCATION '{tablespace}'".encode())
                conn.execute(f'CREATE DATABASE "{dbname}" TABLESPACE "{dbname}"'.encode())
        url = embedded_pg.make_url(server_url, dbname=dbname)
        admin.migrate(url)
        yield data_dir, url
    finally:
        embedded_pg.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
        # embedded_pg's lock beside it (`.<name>.lock`).
        data_dir.with_name(f".{data_dir.name}.lock").unlink(missing_ok=True)
