"""Running our gRPC servers as child processes: start, read the address, wait until healthy, stop.

Shared by `tools.run_pair` (make run) and the test fixtures (tests/support), so both
start and stop the services exactly the same way.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_common import serving

REPO_ROOT = Path(__file__).resolve().parent.parent

# What every server of the project prints once, on stdout, when it accepts calls.
LISTENING_PREFIX = "listening on "

T = TypeVar("T")


def listening_line(line: str) -> str | None:
    """The `listening on host:port` a server printed, as it is or (--log-json) as the
    message of a JSON line; None for any other line."""
    if line.startswith("{"):
        try:
            line = str(json.loads(line).get("message", ""))
        except (ValueError, AttributeError):
            return None
    return line.strip() if line.startswith(LISTENING_PREFIX) else None


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Calls `predicate` until it returns something truthy, and returns that.

    Raises TimeoutError with `message` once `timeout` seconds have passed. Exceptions of
    the types in `ignore` count as "not yet" (say, UNAVAILABLE while a server restarts);
    the last one is chained to the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except ignore as err:
            last_error = err
        else:
            if result:
                return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            text = message() if callable(message) else message
            raise TimeoutError(f"{text} (after {timeout:g} s)") from last_error
        time.sleep(min(interval, remaining))


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child Python process of the project."""
    env = dict(os.environ)
    # The generated proto packages live under protos/; the editable install maps them
    # too, but a child must not depend on how the venv was installed.
    paths = [str(REPO_ROOT), str(REPO_ROOT / "protos")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # The listening line must arrive now, not when a block buffer fills.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class ClientTls:
    """How a client reaches a server over TLS: the CA bundle that signed the server's
    certificate and, for mutual TLS, the client's own certificate and key (PEM files)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return serving.channel_credentials(str(self.ca), str(self.cert or ""), str(self.key or ""))


class ServerProcessError(RuntimeError):
    """A server process died or did not come up in time; the message has its log tail."""


class ServerProcess:
    """One `python -m <module>` server, in its own process group.

    Create with `ServerProcess.start(...)`: it returns once the server printed its
    `listening on host:port` line.
    """

    def __init__(
        self,
        popen: subprocess.Popen[str],
        name: str,
        log_path: Path | None,
        stdout_sink: IO[str],
        tls: ClientTls | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        # How clients reach it: None for plaintext.
        self.tls = tls
        self.host = ""
        self.port = 0
        self._popen = popen
        self._stdout_sink = stdout_sink
        self._owns_sink = log_path is not None
        self._listening: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(
            target=self._read_stdout, name=f"{name}-stdout", daemon=True
        )
        self._reader.start()

    @classmethod
    def start(
        cls,
        module: str,
        args: Sequence[str] = (),
        *,
        log_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        name: str | None = None,
        tls: ClientTls | None = None,
    ) -> ServerProcess:
        """Starts `python -m module *args` and waits for its listening line.

        With `log_dir`, the child's stderr and any further stdout go to a log file there;
        without, stderr is the caller's and stdout lines are echoed to the caller's stdout.
        With `tls`, clients (wait_healthy, channel(), aio_channel()) reach it over TLS.
        """
        name = name or module
        log_path: Path | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            log_path = next(
                path
                for n in itertools.count(1)
                if not (path := log_dir / f"{name}-{n}.log").exists()
            )
            log_path.touch()
        stderr: IO[bytes] | None = open(log_path, "ab") if log_path else None  # noqa: SIM115
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                env=child_env(env),
                cwd=REPO_ROOT,
                # Own process group: a Ctrl-C in the terminal reaches only the parent,
                # which stops its children in order; kill() can take the whole group.
                start_new_session=True,
            )
        finally:
            if stderr is not None:
                stderr.close()  # the child holds its own copy
        sink: IO[str] = open(log_path, "a", encoding="utf-8") if log_path else sys.stdout  # noqa: SIM115
        process = cls(popen, name, log_path, sink, tls)
        try:
            process._wait_listening(startup_timeout)
        except BaseException:
            process.kill()
            raise
        return process

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def address(self) -> str:
        """host:port to connect to (loopback when the server bound every interface)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    @property
    def running(self) -> bool:
        return self._popen.poll() is None

    def send_signal(self, signum: int) -> None:
        """Signals the server process only (SIGSTOP/SIGCONT to freeze it, for example)."""
        if self.running:
            self._popen.send_signal(signum)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then waits up to `timeout` s for a graceful exit, else SIGKILL.

        Returns the exit code (negative: killed by that signal).
        """
        if self.running:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
                self._popen.wait()
        self._finish()
        return self._popen.returncode

    def kill(self) -> int:
        """SIGKILL to the whole process group, no grace: a crash, as far as peers can tell."""
        self._killpg()
        self._popen.wait()
        self._finish()
        return self._popen.returncode

    def wait(self, timeout: float) -> int:
        """Waits for the process to exit on its own; returns its exit code."""
        code = self._popen.wait(timeout)
        self._finish()
        return code

    def channel(self) -> grpc.Channel:
        """A channel to the server, over TLS if it serves TLS."""
        if self.tls is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, self.tls.credentials())

    def aio_channel(self, options: Sequence[tuple[str, int]] = ()) -> grpc.aio.Channel:
        """An asyncio channel to the server, over TLS if it serves TLS."""
        if self.tls is None:
            return grpc.aio.insecure_channel(self.address, options=options)
        return grpc.aio.secure_channel(self.address, self.tls.credentials(), options=options)

    def wait_healthy(self, timeout: float = 30.0, service: str = "") -> None:
        """Polls grpc.health.v1 Check until `service` is SERVING."""
        with self.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)

            def serving() -> bool:
                self._raise_if_dead("while waiting until it is healthy")
                try:
                    response = stub.Check(request, timeout=1.0)
                except grpc.RpcError:
                    return False
                return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

            wait_until(
                serving,
                timeout,
                message=lambda: self._describe(f"not SERVING at {self.address}"),
            )

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(stderr was not captured)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<ServerProcess {self.name} pid={self.pid} {self.address} rc={self.returncode}>"

    def _read_stdout(self) -> None:
        pipe = self._popen.stdout
        assert pipe is not None
        with pipe:
            for line in pipe:
                if (listening := listening_line(line)) is not None:
                    self._listening.put(listening)
                # The pipe must keep draining after the listening line, or a chatty
                # child would block on a full pipe.
                try:
                    self._stdout_sink.write(line if self._owns_sink else f"[{self.name}] {line}")
                    self._stdout_sink.flush()
                except (OSError, ValueError):
                    pass  # the sink was closed during shutdown; the line is not needed

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._listening.get(timeout=0.05)
                break
            except queue.Empty:
                pass
            self._raise_if_dead("before it printed its listening line")
            if time.monotonic() > deadline:
                raise ServerProcessError(
                    self._describe(f"printed no `{LISTENING_PREFIX}host:port` in {timeout:g} s")
                )
        host, _, port = line.removeprefix(LISTENING_PREFIX).rpartition(":")
        host = host.strip("[]")
        self.host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        self.port = int(port)

    def _raise_if_dead(self, when: str) -> None:
        code = self._popen.poll()
        if code is not None:
            # Let the reader copy the last lines, so the log tail shows why it died.
            self._reader.join(timeout=2.0)
            raise ServerProcessError(self._describe(f"exited with {code} {when}"))

    def _describe(self, what: str) -> str:
        if self.log_path is None:
            # Its stderr is the caller's (make run's terminal): what it said is just above.
            return f"{self.name} pid {self.pid} {what}; its output is above"
        tail = self.log_tail()
        return f"{self.name} pid {self.pid} {what} (log: {self.log_path})\n--- log tail:\n{tail}"

    def _killpg(self) -> None:
        # Lookup/permission errors: the group is already gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)

    def _finish(self) -> None:
        # Anything left in the group (the leader is gone) goes too: no orphans.
        self._killpg()
        self._reader.join(timeout=5.0)
        if self._owns_sink and not self._reader.is_alive():
            self._stdout_sink.close()
