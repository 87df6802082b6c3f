"""Workload 6, abuse: what a caller who holds many streams open, or lists large bodies,
costs the delivery service and its other callers.

    watch   GetKpis p99 on a live delivery (SENT, within its validity) with 500
            WatchDeployment streams open on it and on 4 sibling deliveries, against the
            same p99 without them, in the same run: target ratio <= 2
    list    the delivery service's peak RSS while 4 callers list 80 deliveries of 1 MiB
            bodies again and again for 10 s, with the default view (BASIC: no bodies),
            then with view=FULL (pages of at most 3 MiB of bodies): target < 200 MB each

The workload makes its own deliveries, so it needs no other workload. This module holds
its machinery: the streams, the bodies, the listing callers. bench/run.py drives it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2

from bench import environment

WATCH_STREAMS = 1000
# The streams are spread over this many live deliveries, GetKpis measured on the first.
WATCHED_DELIVERIES = 5
WATCH_RECIPIENTS = 100
# Seconds for every stream to get its first update.
WATCH_OPEN_TIMEOUT_S = 60.0

LIST_DELIVERIES = 80
# The largest body CreateDelivery takes (delivery_service.validation.MAX_BODY), in
# characters; ASCII, so as many bytes.
LIST_BODY_BYTES = 1 << 20
LIST_CALLERS = 4
LIST_SECONDS = 10.0
# How often the service's RSS is read while the callers list.
RSS_SAMPLE_S = 0.02
# One connection per channel: each stream group and each listing caller is a client
# of its own, not a call multiplexed on another's connection.
_OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


def body(size: int = LIST_BODY_BYTES, seed: int = 20240601) -> str:
    """An HTML body of exactly `size` characters of seeded random text (base64), which
    PostgreSQL's TOAST compression cannot shrink much: the database stores it whole."""
    head, tail = "<html><body><p>", "</p></body></html>\n"
    filler = size - len(head) - len(tail)
    raw = random.Random(seed).randbytes(filler * 3 // 4 + 3)
    return head + base64.b64encode(raw).decode("ascii")[:filler] + tail


def new_delivery(label: str, content: pb.Content, emails: Sequence[str], validity_s: int) -> Any:
    return pb.CreateDeliveryRequest(
        label=label,
        content=content,
        target=pb.Target(
            recipients=pb.RecipientList(recipients=[pb.Recipient(email=e) for e in emails])
        ),
        validity_period=duration_pb2.Duration(seconds=validity_s),
        feedback_mode=pb.FEEDBACK_MODE_EFS,
    )


# --- watch: the streams ----------------------------------------------------------------


class Watchers:
    """WatchDeployment streams held open from an event loop of its own (a thread), each
    drained by a task of its own. A context manager: closed (every call cancelled, the
    channels closed, the loop stopped) on exit.

        with Watchers(address, metadata, deliveries, 500) as watchers:
            watchers.open()      # returns once every stream got its first update
            ...                  # measure
            watchers.check()     # raises if a stream ended meanwhile
    """

    def __init__(
        self,
        address: str,
        metadata: Sequence[tuple[str, str]],
        delivery_ids: Sequence[int],
        count: int,
    ) -> None:
        self.address = address
        self.metadata = tuple(metadata)
        self.delivery_ids = list(delivery_ids)
        self.count = count
        # Touched only on the loop's thread, read by the caller between the steps.
        self.first_updates = 0
        self.updates = 0
        self.ended: list[str] = []
        self._closing = False
        self._calls: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: list[grpc.aio.Channel] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="watchers")

    def __enter__(self) -> Watchers:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

    def open(self, timeout: float = WATCH_OPEN_TIMEOUT_S) -> float:
        """Opens the streams, spread evenly over the deliveries; returns the seconds until
        each had its first update. Raises RuntimeError if some did not by `timeout`."""
        started = time.perf_counter()
        asyncio.run_coroutine_threadsafe(self._open(timeout), self._loop).result(timeout + 10)
        if self.first_updates < self.count or self.ended:
            raise RuntimeError(
                f"WatchDeployment: {self.first_updates} of {self.count} streams had their first "
                f"update after {timeout:g} s; {len(self.ended)} ended: {self._reasons()}"
            )
        return time.perf_counter() - started

    def check(self) -> None:
        """Raises RuntimeError if a stream ended before it was closed."""
        if self.ended:
            raise RuntimeError(
                f"WatchDeployment: {len(self.ended)} of {self.count} streams ended while "
                f"they should have stayed open: {self._reasons()}"
            )

    def _reasons(self) -> str:
        return ", ".join(sorted({*self.ended})) or "none"

    async def _open(self, timeout: float) -> None:
        everyone = asyncio.Event()
        stubs = []
        for _ in self.delivery_ids:
            channel = grpc.aio.insecure_channel(self.address, options=[_OWN_CONNECTION])
            self._channels.append(channel)
            stubs.append(pb_grpc.DeliveryServiceStub(channel))
        for i in range(self.count):
            k = i % len(self.delivery_ids)
            call = stubs[k].WatchDeployment(
                pb.WatchDeploymentRequest(delivery_id=self.delivery_ids[k]),
                metadata=self.metadata,
            )
            self._calls.append(call)
            self._tasks.append(asyncio.create_task(self._drain(call, everyone)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everyone.wait(), timeout)

    async def _drain(self, call: Any, everyone: asyncio.Event) -> None:
        first = True
        try:
            async for _update in call:
                self.updates += 1
                if first:
                    first = False
                    self.first_updates += 1
                    self._settled(everyone)
            if not self._closing:
                self.ended.append("OK (the service ended the stream)")
        except grpc.aio.AioRpcError as err:
            if not self._closing:
                self.ended.append(err.code().name)
        except asyncio.CancelledError:
            if not self._closing:
                self.ended.append("CANCELLED")
        if first:
            self._settled(everyone)

    def _settled(self, everyone: asyncio.Event) -> None:
        if self.first_updates + len(self.ended) >= self.count:
            everyone.set()

    async def _close(self) -> None:
        self._closing = True
        for call in self._calls:
            call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels:
            await channel.close()


# --- list: callers listing large bodies ------------------------------------------------


@dataclass
class _Caller:
    """What one listing caller saw."""

    listings: int = 0
    pages: list[tuple[int, int]] = field(default_factory=list)  # (bytes, deliveries)
    listed: set[int] = field(default_factory=set)  # deliveries per complete listing
    bodies: set[int] = field(default_factory=set)  # body lengths seen
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ListResult:
    view: str
    seconds: float
    rss_before_mb: float
    peak_rss_sampled_mb: float
    # VmHWM after it was reset to the RSS at the start: the true peak; None when the
    # kernel did not let us reset it.
    peak_rss_hwm_mb: float | None
    listings: int
    pages: int
    page_bytes: list[int]
    deliveries_per_page: list[int]
    deliveries_per_listing: list[int]
    body_lengths: list[int]
    errors: list[str]

    @property
    def peak_rss_mb(self) -> float:
        return max(self.peak_rss_sampled_mb, self.peak_rss_hwm_mb or 0.0)

    @property
    def largest_page_kib(self) -> float:
        return max(self.page_bytes, default=0) / 1024

    def info(self) -> dict[str, Any]:
        sizes = self.page_bytes
        return {
            "view": self.view,
            "seconds": round(self.seconds, 2),
            "callers": LIST_CALLERS,
            "listings": self.listings,
            "calls": self.pages,
            "calls_per_s": round(self.pages / self.seconds, 1),
            "service_rss_before_mb": round(self.rss_before_mb, 1),
            "service_peak_rss_sampled_mb": round(self.peak_rss_sampled_mb, 1),
            "service_peak_rss_hwm_mb": (
                None if self.peak_rss_hwm_mb is None else round(self.peak_rss_hwm_mb, 1)
            ),
            "page_bytes_max": max(sizes, default=0),
            "page_bytes_min": min(sizes, default=0),
            "page_bytes_mean": round(sum(sizes) / len(sizes)) if sizes else 0,
            "deliveries_per_page": sorted(set(self.deliveries_per_page)),
            "deliveries_per_listing": self.deliveries_per_listing,
            "body_lengths_seen": self.body_lengths,
            "errors": self.errors,
        }


def create_bodies(api: Any, metadata: Sequence[tuple[str, str]], validity_s: int) -> list[int]:
    """LIST_DELIVERIES deliveries (DRAFT: not prepared) with a body of LIST_BODY_BYTES."""
    content = pb.Content(subject="A large newsletter", body=body())
    ids = []
    for i in range(LIST_DELIVERIES):
        created = api.CreateDelivery(
            new_delivery(f"bench abuse list {i}", content, [f"l{i}@example.com"], validity_s),
            metadata=metadata,
            timeout=60,
        )
        ids.append(int(created.delivery.id))
    return ids


def _list(
    address: str,
    metadata: Sequence[tuple[str, str]],
    view: pb.DeliveryView.ValueType,
    deadline: float,
) -> _Caller:
    """Lists the DRAFT deliveries, page after page, again and again until `deadline`, on
    a channel of its own with gRPC's default receive limit (4 MiB): a page the service
    makes larger fails here."""
    seen = _Caller()
    with grpc.insecure_channel(address, options=[_OWN_CONNECTION]) as channel:
        api = pb_grpc.DeliveryServiceStub(channel)
        while time.perf_counter() < deadline:
            token, listed = "", 0
            while True:
                request = pb.ListDeliveriesRequest(
                    state=pb.STATE_DRAFT, view=view, page_token=token
                )
                try:
                    page = api.ListDeliveries(request, metadata=metadata, timeout=60)
                except grpc.RpcError as err:
                    seen.errors.append(f"{err.code().name}: {err.details()}")
                    return seen
                seen.pages.append((page.ByteSize(), len(page.deliveries)))
                seen.bodies.update(len(d.content.body) for d in page.deliveries)
                listed += len(page.deliveries)
                token = page.next_page_token
                if not token:
                    break
            seen.listings += 1
            seen.listed.add(listed)
    return seen


def list_bodies(
    address: str,
    metadata: Sequence[tuple[str, str]],
    service_pid: int,
    view: pb.DeliveryView.ValueType,
    seconds: float = LIST_SECONDS,
) -> ListResult:
    """LIST_CALLERS callers list at once for `seconds`; the service's RSS is read every
    RSS_SAMPLE_S meanwhile, and its VmHWM, reset first, read after."""
    before = environment.memory_kb(service_pid).get("VmRSS", 0)
    reset = environment.reset_peak_rss(service_pid)
    samples = [before]
    started = time.perf_counter()
    deadline = started + seconds
    with ThreadPoolExecutor(LIST_CALLERS, thread_name_prefix="list") as pool:
        futures = [
            pool.submit(_list, address, metadata, view, deadline) for _ in range(LIST_CALLERS)
        ]
        while not all(f.done() for f in futures):
            samples.append(environment.memory_kb(service_pid).get("VmRSS", 0))
            time.sleep(RSS_SAMPLE_S)
        callers = [f.result() for f in futures]
    elapsed = time.perf_counter() - started
    samples.append(environment.memory_kb(service_pid).get("VmRSS", 0))
    hwm = environment.memory_kb(service_pid).get("VmHWM", 0) if reset else None
    pages = [p for c in callers for p in c.pages]
    return ListResult(
        view=pb.DeliveryView.Name(view),
        seconds=elapsed,
        rss_before_mb=before / 1024,
        peak_rss_sampled_mb=max(samples) / 1024,
        peak_rss_hwm_mb=None if hwm is None else hwm / 1024,
        listings=sum(c.listings for c in callers),
        pages=len(pages),
        page_bytes=[size for size, _ in pages],
        deliveries_per_page=[n for _, n in pages],
        deliveries_per_listing=sorted({n for c in callers for n in c.listed}),
        body_lengths=sorted({n for c in callers for n in c.bodies}),
        errors=[e for c in callers for e in c.errors],
    )
