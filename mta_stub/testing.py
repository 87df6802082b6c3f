"""Helpers for testing code against the MTA stub, with or without pytest.

- `ServerProcess.start_stub()` runs the stub as a process of its own on a free loopback
  port, test controls on; `start_pair()` (mta_stub.pair) adds a delivery service on a
  throwaway embedded PostgreSQL.
- `StubControls` sets and clears scoped scenarios and reads the stub's outcomes.
- `Relayer` plays a delivery service's part on one Exchange stream: it relays messages
  and collects and acknowledges their feedback.
- `Ids` hands out delivery and message ids that no other user of a shared stub picks.

The pytest plugin (mta_stub.pytest_plugin) wraps them in fixtures; docs/stub-fixture.md
shows them at work. Everything here talks to the stub through mta.v1 only.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc

HOST = "127.0.0.1"
# What a server of this package prints once it accepts calls (plain or inside a JSON line).
_LISTENING = re.compile(r"listening on \[?([^\s\]\"]+?)\]?:(\d+)")
FINAL_KINDS = frozenset(
    {mta.EVENT_KIND_DELIVERED, mta.EVENT_KIND_HARD_BOUNCE, mta.EVENT_KIND_EXPIRED}
)
# Most messages in one RelayBatch (the stub's limit).
MAX_BATCH = 10_000


class ServerProcessError(RuntimeError):
    """A server did not come up, or died; the message has the tail of its log."""


class ServerProcess:
    """`python -m <module> --host 127.0.0.1 --port 0 ...` in a process group of its own,
    its stdout and stderr in a log file; stop() ends it."""

    def __init__(self, module: str, args: Sequence[str], log_path: Path) -> None:
        self.module = module
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[str] = log_path.open("a", encoding="utf-8")
        self._popen = subprocess.Popen(
            [sys.executable, "-m", module, "--host", HOST, "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self._address: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self.address = ""

    @classmethod
    def start(
        cls, module: str, args: Sequence[str], log_path: Path, timeout: float = 30.0
    ) -> ServerProcess:
        """Starts the server and returns once it is SERVING (grpc.health.v1)."""
        process = cls(module, args, log_path)
        try:
            process._wait_serving(timeout)
        except BaseException:
            process.stop(timeout=0)
            raise
        return process

    @classmethod
    def start_stub(cls, log_path: Path, *args: str, timeout: float = 30.0) -> ServerProcess:
        """`python -m mta_stub --test-controls *args`, SERVING."""
        return cls.start("mta_stub", ["--test-controls", *args], log_path, timeout)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def running(self) -> bool:
        return self._popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL to the group after timeout seconds; returns the exit code."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._popen.pid, signal.SIGKILL)
                self._popen.wait()
        self._reader.join(timeout=5)
        self._log.close()
        return self._popen.returncode

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _read_stdout(self) -> None:
        pipe = self._popen.stdout
        assert pipe is not None
        with pipe:
            for line in pipe:
                if not self.address and (found := _LISTENING.search(line)):
                    host = found[1]
                    host = HOST if host in ("0.0.0.0", "::") else host
                    self._address.put(
                        f"[{host}]:{found[2]}" if ":" in host else f"{host}:{found[2]}"
                    )
                with contextlib.suppress(ValueError):
                    self._log.write(line)
                    self._log.flush()

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.address:
            try:
                self.address = self._address.get(timeout=0.05)
            except queue.Empty:
                self._check(deadline, "printed no listening line")
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                with contextlib.suppress(grpc.RpcError):
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                self._check(deadline, f"not SERVING at {self.address}")
                time.sleep(0.05)

    def _check(self, deadline: float, what: str) -> None:
        code = self._popen.poll()
        if code is not None:
            self._reader.join(timeout=2)
            raise ServerProcessError(f"{self.module} exited with {code}\n{self.log_tail()}")
        if time.monotonic() > deadline:
            raise ServerProcessError(f"{self.module} {what} in time\n{self.log_tail()}")


class Ids:
    """Delivery and message ids for one user of a shared stub.

    The stub deduplicates messages by id across all its clients, so users sharing it must
    not reuse each other's ids: each Ids draws a random 30-bit prefix and counts under it.
    """

    def __init__(self) -> None:
        self.prefix = (secrets.randbelow(2**30 - 1) + 1) << 32
        self._deliveries = 0
        self._messages = 0

    def delivery(self) -> int:
        """A new delivery id."""
        self._deliveries += 1
        return self.prefix | self._deliveries

    def messages(self, count: int) -> range:
        """count new message ids, consecutive."""
        first = self.prefix | (self._messages + 1)
        self._messages += count
        return range(first, first + count)


class StubControls:
    """The stub's test controls (SetScenario, ClearScenario, GetOutcomes), each call with
    a deadline; the stub must run with --test-controls."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address)
        self._stub = mta_grpc.MtaServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def set_scenario(
        self,
        *,
        delivery_id: int = 0,
        client_id: str = "",
        mix: mta.Mix | None = None,
        faults: mta.Faults | None = None,
        retry_interval_ms: int = 0,
        engagement_delay_ms: int = 0,
        hold_feedback: bool = False,
    ) -> None:
        """Sets the scenario of a delivery, of a client, or (neither) the global one; see
        mta.v1.SetScenarioRequest."""
        self._stub.SetScenario(
            mta.SetScenarioRequest(
                delivery_id=delivery_id,
                client_id=client_id,
                mix=mix,
                faults=faults,
                retry_interval_ms=retry_interval_ms,
                engagement_delay_ms=engagement_delay_ms,
                hold_feedback=hold_feedback,
            ),
            timeout=self.timeout,
        )

    def clear_scenario(self, *, delivery_id: int = 0, client_id: str = "") -> bool:
        """Removes a scoped scenario (neither: resets the global one); whether there was one."""
        request = mta.ClearScenarioRequest(delivery_id=delivery_id, client_id=client_id)
        return bool(self._stub.ClearScenario(request, timeout=self.timeout).cleared)

    @contextlib.contextmanager
    def scenario(self, **fields: Any) -> Iterator[None]:
        """set_scenario(**fields) for the duration of a with block, cleared after it."""
        self.set_scenario(**fields)
        try:
            yield
        finally:
            scope = {k: fields[k] for k in ("delivery_id", "client_id") if k in fields}
            self.clear_scenario(**scope)

    def outcomes(self, *, delivery_id: int = 0, client_id: str = "") -> mta.GetOutcomesResponse:
        """The stub's record of a delivery (0: all) as relayed by a client ('': all)."""
        request = mta.GetOutcomesRequest(delivery_id=delivery_id, client_id=client_id)
        response: mta.GetOutcomesResponse = self._stub.GetOutcomes(request, timeout=self.timeout)
        return response

    def wait_outcomes(
        self,
        done: Callable[[mta.GetOutcomesResponse], bool],
        *,
        delivery_id: int = 0,
        client_id: str = "",
        timeout: float = 30.0,
    ) -> mta.GetOutcomesResponse:
        """Polls outcomes until done(outcomes); TimeoutError after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            outcomes = self.outcomes(delivery_id=delivery_id, client_id=client_id)
            if done(outcomes):
                return outcomes
            if time.monotonic() > deadline:
                raise TimeoutError(f"outcomes not reached in {timeout:g} s: {outcomes}")
            time.sleep(0.02)


class Relayer:
    """A client's Exchange stream: relays messages, keeps and acknowledges their feedback.

    Feedback is for the client that relayed the message (mta.v1.Hello): give each Relayer
    its own client_id unless it is to take over another's stream. on_feedback, if given,
    sees each FeedbackBatch and the monotonic time it arrived, from the reading thread.
    """

    def __init__(
        self,
        address: str,
        client_id: str,
        *,
        ids: Ids | None = None,
        acknowledge: bool = True,
        keep_events: bool = True,
        on_feedback: Callable[[mta.FeedbackBatch, float], None] | None = None,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.ids = ids or Ids()
        self.acknowledge = acknowledge
        self._keep = keep_events
        self._on_feedback = on_feedback
        self._events: list[mta.FeedbackEvent] = []
        self._changed = threading.Condition()
        self._acks: dict[int, Future[mta.RelayAck]] = {}
        self._seq = 0
        self._error: grpc.RpcError | None = None
        self._requests: queue.Queue[mta.ExchangeRequest | None] = queue.Queue()
        self._requests.put(mta.ExchangeRequest(hello=mta.Hello(client_id=client_id)))
        self._channel = grpc.insecure_channel(address)
        self._call = mta_grpc.MtaServiceStub(self._channel).Exchange(iter(self._requests.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> Relayer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def relay(
        self,
        delivery_id: int,
        emails: Sequence[str],
        *,
        message_ids: Iterable[int] | None = None,
        validity: float = 3600.0,
        subject: str = "Hello",
        links: Sequence[str] = ("https://example.com/a",),
        timeout: float = 30.0,
    ) -> list[int]:
        """Relays one message per address, in batches of at most 10,000; returns their ids
        once the stub acknowledged every batch."""
        ids = list(message_ids) if message_ids is not None else list(self.ids.messages(len(emails)))
        expire = timestamp_pb2.Timestamp()
        expire.FromNanoseconds(int((time.time() + validity) * 1e9))
        pending = []
        for start in range(0, len(emails), MAX_BATCH):
            batch = mta.RelayBatch(
                delivery_id=delivery_id,
                content=mta.Content(subject=subject, body="<p>Hello</p>", links=list(links)),
                expire_time=expire,
                messages=[
                    mta.Message(message_id=i, email=e)
                    for i, e in zip(
                        ids[start : start + MAX_BATCH],
                        emails[start : start + MAX_BATCH],
                        strict=True,
                    )
                ],
            )
            pending.append(self.send(batch))
        for ack in pending:
            ack.result(timeout)
        return ids

    def send(self, batch: mta.RelayBatch) -> Future[mta.RelayAck]:
        """Sends a RelayBatch (its seq set here); the future is its RelayAck."""
        self._raise_if_broken()
        with self._changed:
            self._seq += 1
            batch.seq = self._seq
            future: Future[mta.RelayAck] = Future()
            self._acks[batch.seq] = future
        self._requests.put(mta.ExchangeRequest(relay=batch))
        return future

    def events(self, delivery_id: int = 0) -> list[mta.FeedbackEvent]:
        """The feedback received so far, of one delivery or (0) all, duplicates included."""
        with self._changed:
            return [e for e in self._events if delivery_id in (0, e.delivery_id)]

    def wait_for(
        self, done: Callable[[list[mta.FeedbackEvent]], bool], timeout: float = 30.0
    ) -> list[mta.FeedbackEvent]:
        """Waits until done(all events received) holds; returns the events then."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self._events):
                self._raise_if_broken()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"feedback not complete in {timeout:g} s ({len(self._events)} events)"
                    )
                self._changed.wait(min(remaining, 0.5))
            return list(self._events)

    def wait_final(self, message_ids: Iterable[int], timeout: float = 30.0) -> dict[int, int]:
        """Waits until each message has its final event; returns message id -> its kind
        (mta.v1.EventKind: DELIVERED, HARD_BOUNCE or EXPIRED)."""
        wanted = set(message_ids)

        def finals(events: list[mta.FeedbackEvent]) -> dict[int, int]:
            return {
                e.message_id: e.kind
                for e in events
                if e.kind in FINAL_KINDS and e.message_id in wanted
            }

        events = self.wait_for(lambda events: len(finals(events)) == len(wanted), timeout)
        return finals(events)

    def close(self) -> None:
        """Ends the stream: what was not acknowledged is sent again to the client's next one."""
        self._requests.put(None)
        self._reader.join(timeout=5)
        self._call.cancel()
        self._channel.close()

    def _read(self) -> None:
        try:
            for response in self._call:
                if response.HasField("relay_ack"):
                    with self._changed:
                        future = self._acks.pop(response.relay_ack.seq, None)
                    if future is not None:
                        future.set_result(response.relay_ack)
                    continue
                batch = response.feedback
                if self._on_feedback is not None:
                    self._on_feedback(batch, time.monotonic())
                with self._changed:
                    if self._keep:
                        self._events.extend(batch.events)
                    self._changed.notify_all()
                if self.acknowledge:
                    self._requests.put(mta.ExchangeRequest(ack=mta.FeedbackAck(seq=batch.seq)))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._error = exc
        with self._changed:
            for future in self._acks.values():
                future.set_exception(self._error or ConnectionError("the stream ended"))
            self._acks.clear()
            self._changed.notify_all()

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise self._error
