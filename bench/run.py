"""One run of the benchmark: a fresh database, fresh processes, then the workloads in order.

    set-up      profiles (COPY), a segment delivery of N and one of 10,000, both prepared
    prepare     PrepareDelivery of the segment of N (in the set-up), then its ceiling: a
                copy of the delivery prepared by one plain statement, checked for the
                same rows, then deleted
    relay       ConfirmSend of the big delivery -> every message acknowledged by the stub
    ingest      the stub releases the feedback it held -> every event committed
    kpis        GetKpis x 10,000 on each delivery
    load        GetKpis by 64 callers at once, on the big delivery and across 1,000, with
                one service process then two on one port, against the same statement
                sent by psycopg and by pgbench at the same concurrency (bench/kpis_load.py)
    stats       ComputeStats on the big delivery
    abuse       GetKpis p99 with 500 WatchDeployment streams open against without them;
                the service's peak RSS while 4 callers list 80 deliveries of 1 MiB bodies
                (bench/abuse.py; its deliveries are its own)
    ceiling     the services stopped, the ingest's row changes replayed in plain SQL

Later workloads need the state the earlier ones leave (feedback needs relayed
messages), so a workload left out of --only still runs, unmeasured, when a later one
needs it. The abuse workload needs none: `--only abuse` relays nothing else.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc
from rich.console import Console

from bench import abuse, ceiling, environment, kpis_load
from bench.environment import CpuMeter
from bench.profiling import Profiler
from delivery_service import admin
from mta_stub import presets
from tools.pair import Pair

STAGES = ("prepare", "relay", "ingest", "kpis", "load", "stats", "abuse", "ceiling")

# The seeded mix made a realistic newsletter's: fewer hard and soft bounces, a quarter of
# delivered messages opened (under a third of those clicked, as in the seeded mix), its
# own seed (results.json compares runs drawn from it). No soft-until-expiry: such a
# message bounces at every retry interval until the validity ends, so its events are a
# matter of how long one waits, not of how fast the service ingests.
MIX = presets.variant(seed=20240601, hard_bounce_rate=0.02, soft_then_delivered_rate=0.05)
MIX.soft_until_expiry_rate = 0.0
MIX.open_rate = 0.25
# Long enough that nothing expires during a run, so no finalisation runs meanwhile.
VALIDITY_SECONDS = 6 * 3600
POLL_S = 0.1
SMALL_SEGMENT = "small"
BIG_SEGMENT = "big"


@dataclass(frozen=True)
class Config:
    messages: int
    small_messages: int
    kpis_calls: int
    stages: frozenset[str]
    body_bytes: int
    stage_timeout: float
    stall_timeout: float
    log_dir: Path
    keep_database: bool
    ceiling_parts: int
    # One WatchDeliveryEvents consumer of the big delivery during the ingest.
    feed_consumer: bool = True


@dataclass
class RunResult:
    """Every figure of one run (the table's), and what explains them (info)."""

    figures: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def content(body_bytes: int) -> pb.Content:
    """A plain newsletter: a subject, an HTML body of about body_bytes, three tracked links."""
    links = [f"https://example.com/newsletter/article-{i}?utm_source=email" for i in range(3)]
    paragraph = (
        "<p>Dear reader, here is what happened this month: new products, events near "
        "you and the stories our readers liked best. "
        + " ".join(f'<a href="{link}">Read more</a>' for link in links)
        + "</p>\n"
    )
    repeats = max(1, body_bytes // len(paragraph))
    body = "<html><body>\n" + paragraph * repeats + "</body></html>\n"
    return pb.Content(subject="Your monthly newsletter: what is new", body=body, links=links)


class Stalled(RuntimeError):
    """A workload made no progress for too long, or ran past its time."""


def wait_for(
    check: Callable[[], tuple[bool, int]],
    what: str,
    console: Console,
    *,
    timeout: float,
    stall: float,
    on_poll: Callable[[], None] | None = None,
) -> float:
    """Polls check() -> (done, progress) every POLL_S; returns when done (time.perf_counter).

    Fails when progress has not moved for `stall` seconds or `timeout` has passed.
    """
    started = last_move = time.perf_counter()
    last = -1
    with console.status(f"{what}...") as status:
        while True:
            done, progress = check()
            now = time.perf_counter()
            if on_poll is not None:
                on_poll()
            if done:
                return now
            if progress != last:
                last, last_move = progress, now
            if now - last_move > stall:
                raise Stalled(f"{what}: no progress for {stall:g} s (at {progress:,})")
            if now - started > timeout:
                raise Stalled(f"{what}: not done after {timeout:g} s (at {progress:,})")
            status.update(f"{what}: {progress:,} after {now - started:,.0f} s")
            time.sleep(POLL_S)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class FeedConsumer:
    """One consumer of the event feed during the ingest: a WatchDeliveryEvents stream of
    the delivery from the end of the feed, read in a thread; each event's lag is its
    receipt minus the time the service wrote it."""

    def __init__(self, api: Any, caller: list[tuple[str, str]], delivery_id: int) -> None:
        request = pb.WatchDeliveryEventsRequest(delivery_id=delivery_id, from_end=True)
        self.call = api.WatchDeliveryEvents(request, metadata=caller)
        self.ids: set[str] = set()
        self.lags: list[float] = []
        self.last_receipt = 0.0
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        # The stream's first message: it is watching from there.
        next(self.call)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for message in self.call:
                now = time.time()
                with self.changed:
                    for event in message.events:
                        self.ids.add(event.event_id)
                        self.lags.append(now - event.commit_time.ToMicroseconds() / 1e6)
                    self.last_receipt = time.perf_counter()
                    self.changed.notify_all()

    def finish(self, events: int, started: float, timeout: float) -> dict[str, Any]:
        """Waits until it has every feedback event of the delivery; its figures."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.ids) >= events, timeout=timeout)
            received, lags, last = len(self.ids), sorted(self.lags), self.last_receipt
        self.call.cancel()
        self.thread.join(10)
        return {
            "events": received,
            "all_received": received >= events,
            "duplicates": len(lags) - received,
            "events_per_s": round(received / max(last - started, 1e-9), 1),
            "lag_p50_s": round(percentile(lags, 0.5), 3) if lags else None,
            "lag_p99_s": round(percentile(lags, 0.99), 3) if lags else None,
        }


class Run:
    def __init__(
        self, config: Config, server: str, name: str, console: Console, profiler: Profiler
    ) -> None:
        self.config = config
        self.server = server
        self.name = name
        self.console = console
        self.profiler = profiler
        self.result = RunResult()
        self.url = ""
        self.pair: Pair | None = None
        self.channels: list[grpc.Channel] = []
        self.api: Any = None
        self.mta: Any = None
        self.caller: list[tuple[str, str]] = []
        self.big = 0
        self.small = 0
        # When the relay started, and whether feedback was ingested meanwhile (a stub that
        # ignores hold_feedback): then the ingest can only be timed from the relay's start.
        self.relay_started = 0.0
        self.overlapped = False
        # Whether the stub holds the feedback it makes (from the relay to the ingest).
        self.feedback_held = False

    # --- the run ---------------------------------------------------------------------

    def execute(self) -> RunResult:
        stages = self.config.stages
        # Every workload but abuse needs the big delivery relayed, and those after the
        # ingest its feedback; abuse makes deliveries of its own.
        last = max((STAGES.index(s) for s in stages if s != "abuse"), default=-1)
        try:
            self.set_up()
            if last >= STAGES.index("relay"):
                self.relay(measured="relay" in stages)
            if last >= STAGES.index("ingest"):
                self.ingest(measured="ingest" in stages)
            if "kpis" in stages:
                self.kpis()
            if "load" in stages:
                self.load()
            if "stats" in stages:
                self.stats()
            if "abuse" in stages:
                self.abuse()
            self.stop_services()
            if "ceiling" in stages:
                self.ceiling()
        finally:
            self.stop_services()
            if self.url and not self.config.keep_database:
                environment.drop_database(self.server, self.name)
        return self.result

    def set_up(self) -> None:
        c = self.config
        info = self.result.info
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
        started = time.perf_counter()
        with self.console.status("set-up: database and profiles..."):
            self.url = environment.create_database(self.server, self.name)
            environment.load_profiles(self.url, BIG_SEGMENT, 0, c.messages)
            environment.load_profiles(self.url, SMALL_SEGMENT, c.messages, c.small_messages)
            self.caller = environment.create_caller(self.url)
        info["profiles_load_s"] = round(time.perf_counter() - started, 1)
        self.pair = environment.start_pair(self.url, c.log_dir, service_args=("--reuse-port",))
        info["service_pid"] = self.pair.service.pid
        info["stub_pid"] = self.pair.stub.pid
        options = [("grpc.max_receive_message_length", 64 << 20)]
        service_channel = grpc.insecure_channel(self.pair.service.address, options=options)
        stub_channel = grpc.insecure_channel(self.pair.stub.address, options=options)
        self.channels = [service_channel, stub_channel]
        self.api = pb_grpc.DeliveryServiceStub(service_channel)
        self.mta = mta_grpc.MtaServiceStub(stub_channel)
        with self.console.status(f"set-up: preparing a delivery of {c.messages:,}..."):
            self.big = self._created_delivery(pb.Target(segment=BIG_SEGMENT), BIG_SEGMENT)
            prepare_s = self._timed_preparation("segment", self.big, c.messages)
            self.small = self._created_delivery(pb.Target(segment=SMALL_SEGMENT), SMALL_SEGMENT)
            self._prepared(self.small, c.small_messages)
            if "prepare" in c.stages:
                listed = self._listed_delivery(c.messages)
                self._timed_preparation("list", listed, c.messages)
                with psycopg.connect(self.url, autocommit=True) as conn:
                    ceiling.forget_delivery(conn, listed, target=True)
            environment.vacuum(self.url, "vacuum_sending_logs")
        info["prepare_s"] = round(prepare_s, 2)
        info["body_bytes"] = len(content(c.body_bytes).body)
        self.console.log(
            f"set-up: {c.messages:,} + {c.small_messages:,} profiles loaded in "
            f"{info['profiles_load_s']} s; PrepareDelivery of {c.messages:,} took {prepare_s:.1f} s"
        )

    def _timed_preparation(self, kind: str, delivery_id: int, expected: int) -> float:
        """PrepareDelivery of a DRAFT delivery; with the prepare workload, its ceiling
        first (on the same tables), then the two compared. How long the service took."""
        if "prepare" not in self.config.stages:
            return self._prepared(delivery_id, expected)
        with self.console.status(f"prepare: the {kind}'s ceiling in plain SQL..."):
            reference = ceiling.measure_preparation(self.url, delivery_id)
        prepare_s = self._prepared(delivery_id, expected)
        with psycopg.connect(self.url, autocommit=True) as conn:
            same_rows = ceiling.preparation_fingerprint(conn, delivery_id) == reference.fingerprint
        self.result.info[f"prepare_{kind}_ceiling"] = reference.info(same_rows)
        self.result.figures[f"prepare_{kind}_s"] = prepare_s
        self.result.figures[f"prepare_{kind}_ceiling_s"] = reference.seconds
        self.result.figures[f"prepare_{kind}_ceiling_ratio"] = reference.seconds / prepare_s
        self.console.log(
            f"prepare: PrepareDelivery of a {kind} of {reference.messages:,} in "
            f"{prepare_s:.2f} s, plain SQL in {reference.seconds:.2f} s; same rows: {same_rows}"
        )
        if not same_rows:
            raise RuntimeError(
                f"the {kind}'s preparation ceiling wrote other rows than the service"
            )
        return prepare_s

    def _created_delivery(self, target: pb.Target, label: str) -> int:
        created = self.api.CreateDelivery(
            pb.CreateDeliveryRequest(
                label=f"bench {label}",
                content=content(self.config.body_bytes),
                target=target,
                validity_period=duration_pb2.Duration(seconds=VALIDITY_SECONDS),
                feedback_mode=pb.FEEDBACK_MODE_EFS,
            ),
            metadata=self.caller,
            timeout=60,
        )
        delivery_id: int = created.delivery.id
        return delivery_id

    def _listed_delivery(self, count: int) -> int:
        """A delivery to a list of `count` addresses of their own, built by CreateDelivery
        and AddRecipients, a request's most at a time."""
        emails = [pb.Recipient(email=f"l{i}@list.example.com") for i in range(count)]
        per_call = admin.RECIPIENTS_PER_REQUEST
        first = pb.RecipientList(recipients=emails[:per_call])
        delivery_id = self._created_delivery(pb.Target(recipients=first), "list")
        for position in range(per_call, count, per_call):
            self.api.AddRecipients(
                pb.AddRecipientsRequest(
                    delivery_id=delivery_id,
                    position=position,
                    recipients=pb.RecipientList(recipients=emails[position : position + per_call]),
                ),
                metadata=self.caller,
                timeout=60,
            )
        return delivery_id

    def _prepared(self, delivery_id: int, expected: int) -> float:
        """PrepareDelivery of a DRAFT delivery, checked; how long it took."""
        started = time.perf_counter()
        prepared = self.api.PrepareDelivery(
            pb.PrepareDeliveryRequest(delivery_id=delivery_id),
            metadata=self.caller,
            timeout=self.config.stage_timeout,
        )
        elapsed = time.perf_counter() - started
        if prepared.to_deliver != expected or prepared.delivery.state != pb.STATE_APPROVED:
            raise RuntimeError(
                f"delivery {delivery_id} prepared to {prepared.to_deliver} messages in state "
                f"{pb.State.Name(prepared.delivery.state)}, expected {expected} and APPROVED"
            )
        return elapsed

    def _confirm(self, delivery_id: int) -> None:
        self.api.ConfirmSend(
            pb.ConfirmSendRequest(delivery_id=delivery_id), metadata=self.caller, timeout=60
        )

    def _outcomes(self, delivery_id: int) -> Any:
        return self.mta.GetOutcomes(mta.GetOutcomesRequest(delivery_id=delivery_id), timeout=10)

    def _state(self, delivery_id: int) -> int:
        got = self.api.GetDelivery(
            pb.GetDeliveryRequest(delivery_id=delivery_id), metadata=self.caller, timeout=10
        )
        state: int = got.delivery.state
        return state

    def _pids(self) -> dict[str, int]:
        assert self.pair is not None
        return {"service": self.pair.service.pid, "stub": self.pair.stub.pid}

    # --- 1. relay --------------------------------------------------------------------

    def relay(self, *, measured: bool) -> None:
        assert self.pair is not None
        c = self.config
        n = c.messages
        # The stub keeps every feedback event to itself until the ingest: the relay runs alone.
        self.mta.SetScenario(mta.SetScenarioRequest(mix=MIX, hold_feedback=True), timeout=10)
        self.feedback_held = True
        service_pid = self.pair.service.pid
        rss_samples: list[int] = []
        meter = CpuMeter(self.pair)

        def sent() -> tuple[bool, int]:
            kpis = self.api.GetKpis(
                pb.GetKpisRequest(delivery_id=self.big), metadata=self.caller, timeout=10
            ).kpis
            done = kpis.sent >= n and self._state(self.big) == pb.STATE_SENT
            return done, int(kpis.sent)

        def sample_rss() -> None:
            rss_samples.append(environment.memory_kb(service_pid).get("VmRSS", 0))

        with self.profiler.record("relay", self._pids()):
            before = meter.snapshot()
            started = self.relay_started = time.perf_counter()
            self._confirm(self.big)
            ended = wait_for(
                sent,
                f"relay of {n:,}",
                self.console,
                timeout=c.stage_timeout,
                stall=c.stall_timeout,
                on_poll=sample_rss,
            )
            after = meter.snapshot()
        elapsed = ended - started
        memory = environment.memory_kb(service_pid)
        stub_memory = environment.memory_kb(self.pair.stub.pid)
        held = self._outcomes(self.big)
        leaked = environment.count(self.url, "count_events", delivery_id=self.big)
        info = self.result.info
        info["relay"] = {
            "seconds": round(elapsed, 2),
            "cpu": CpuMeter.between(before, after),
            "service_rss_max_sampled_mb": round(max(rss_samples, default=0) / 1024, 1),
            "service_vmhwm_mb": round(memory.get("VmHWM", 0) / 1024, 1),
            "stub_vmhwm_mb": round(stub_memory.get("VmHWM", 0) / 1024, 1),
            "stub_accepted": held.accepted,
            "stub_duplicates": held.duplicates,
            "events_held_by_stub": held.unacknowledged_events,
            # Non-zero means the stub ignored hold_feedback and ingest ran during the relay.
            "events_committed_during_relay": leaked,
        }
        if leaked:
            self.overlapped = True
            self.console.log(
                f"[yellow]warning: {leaked:,} feedback events were committed during the relay: "
                "the stub did not hold them (SetScenarioRequest.hold_feedback). The relay was "
                "measured with the ingest running beside it, and the ingest is timed from the "
                "relay's start.[/yellow]"
            )
        if measured:
            self.result.figures["relay_messages_per_s"] = n / elapsed
            self.result.figures["relay_peak_rss_mb"] = memory.get("VmHWM", 0) / 1024
        self.console.log(
            f"relay: {n:,} messages in {elapsed:.1f} s = {n / elapsed:,.0f}/s; "
            f"service peak RSS {memory.get('VmHWM', 0) / 1024:.0f} MB; cpu {info['relay']['cpu']}"
        )

    # --- 2. ingest -------------------------------------------------------------------

    def ingest(self, *, measured: bool) -> None:
        assert self.pair is not None
        c = self.config
        n = c.messages
        environment.vacuum(self.url, "vacuum_sending_logs")
        meter = CpuMeter(self.pair)

        def settled() -> tuple[bool, int]:
            got = self._outcomes(self.big)
            done = got.accepted == n and got.in_flight == 0 and got.unacknowledged_events == 0
            # Progress is what remains to acknowledge, counting down.
            return done, -int(got.unacknowledged_events)

        consumer = FeedConsumer(self.api, self.caller, self.big) if c.feed_consumer else None
        with self.profiler.record("ingest", self._pids()):
            before = meter.snapshot()
            started = time.perf_counter()
            # Keeps the mix; releases everything the stub held.
            self.mta.SetScenario(mta.SetScenarioRequest(mix=MIX, hold_feedback=False), timeout=10)
            self.feedback_held = False
            ended = wait_for(
                settled,
                "ingest: events left to acknowledge (negated)",
                self.console,
                timeout=c.stage_timeout,
                stall=c.stall_timeout,
            )
            after = meter.snapshot()
        if self.overlapped:
            started = self.relay_started
        elapsed = ended - started
        events = environment.count(self.url, "count_events", delivery_id=self.big)
        feed = consumer.finish(events, started, timeout=c.stage_timeout) if consumer else None
        outcome = self._outcomes(self.big)
        kpis = self.api.GetKpis(
            pb.GetKpisRequest(delivery_id=self.big), metadata=self.caller, timeout=10
        ).kpis
        memory = environment.memory_kb(self.pair.service.pid)
        consistent = (
            kpis.delivered == outcome.delivered
            and kpis.failed == outcome.hard_bounced + outcome.expired
            and kpis.pending == 0
            and outcome.delivered + outcome.hard_bounced + outcome.expired == n
        )
        self.result.info["ingest"] = {
            "seconds": round(elapsed, 2),
            "events": events,
            "events_per_s": round(events / elapsed, 1),
            "events_per_message": round(events / n, 3),
            # Overlapped: the ingest's CPU is in the relay's figures.
            "cpu": None if self.overlapped else CpuMeter.between(before, after),
            "service_vmhwm_mb": round(memory.get("VmHWM", 0) / 1024, 1),
            "stub": {
                "delivered": outcome.delivered,
                "hard_bounced": outcome.hard_bounced,
                "soft_bounced": outcome.soft_bounced,
                "opened": outcome.opened,
                "clicked": outcome.clicked,
            },
            "kpis_match_stub": consistent,
            "overlapped_with_relay": self.overlapped,
            # One WatchDeliveryEvents consumer of the delivery, from the feed's end before
            # the feedback was released: what it received, how fast, and how late.
            "feed": feed,
        }
        if not consistent:
            self.console.log(
                f"[red]the KPIs do not match the stub's record: {kpis} vs {outcome}[/red]"
            )
        if measured:
            self.result.figures["ingest_events_per_s"] = events / elapsed
            if feed:
                self.result.figures["feed_events_per_s"] = feed["events_per_s"]
                self.result.figures["feed_lag_p99_s"] = feed["lag_p99_s"]
        cpu = self.result.info["ingest"]["cpu"] or "counted with the relay"
        self.console.log(
            f"ingest: {events:,} events ({events / n:.2f} per message) in {elapsed:.1f} s = "
            f"{events / elapsed:,.0f}/s; cpu {cpu}"
        )

    # --- 4. GetKpis ------------------------------------------------------------------

    def kpis(self) -> None:
        c = self.config
        # The small delivery goes through relay and feedback like the big one, unmeasured,
        # so that its counters are sharded the same way.
        self._confirm(self.small)
        small_n = c.small_messages

        def small_settled() -> tuple[bool, int]:
            got = self._outcomes(self.small)
            done = (
                got.accepted == small_n
                and got.in_flight == 0
                and got.unacknowledged_events == 0
                and self._state(self.small) == pb.STATE_SENT
            )
            return done, int(got.accepted)

        wait_for(
            small_settled,
            f"set-up: the {small_n:,} delivery",
            self.console,
            timeout=c.stage_timeout,
            stall=c.stall_timeout,
        )
        for label, delivery_id in (("small", self.small), ("big", self.big)):
            with self.profiler.record(f"kpis-{label}", {"service": self._pids()["service"]}):
                latencies = self._kpis_latencies(delivery_id)
            p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
            self.result.figures[f"kpis_p50_ms_{label}"] = p50
            self.result.figures[f"kpis_p99_ms_{label}"] = p99
            self.result.info[f"kpis_{label}"] = {
                "calls": len(latencies),
                "mean_ms": round(statistics.fmean(latencies), 3),
                "max_ms": round(latencies[-1], 3),
            }
            self.console.log(
                f"GetKpis on the {label} delivery: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                f"max {latencies[-1]:.2f} ms over {len(latencies):,} calls"
            )

    def _kpis_latencies(self, delivery_id: int) -> list[float]:
        """Sorted latencies in ms of sequential unary calls on one channel, after a warm-up."""
        request = pb.GetKpisRequest(delivery_id=delivery_id)
        call = self.api.GetKpis
        for _ in range(200):
            call(request, metadata=self.caller, timeout=5)
        latencies = []
        with self.console.status(f"GetKpis x {self.config.kpis_calls:,}..."):
            for _ in range(self.config.kpis_calls):
                started = time.perf_counter_ns()
                call(request, metadata=self.caller, timeout=5)
                latencies.append((time.perf_counter_ns() - started) / 1e6)
        latencies.sort()
        return latencies

    # --- GetKpis under many callers --------------------------------------------------

    def load(self) -> None:
        assert self.pair is not None
        with self.console.status(f"load: {kpis_load.DELIVERIES:,} deliveries to read..."):
            many = [self._small_prepared(k) for k in range(kpis_load.DELIVERIES)]
        scopes = {"one": [self.big], "many": many}
        info: dict[str, Any] = {"callers": kpis_load.CALLERS, "seconds": kpis_load.SECONDS}
        for scope, ids in scopes.items():
            with self.console.status(f"load: {scope}, psycopg and pgbench..."):
                direct = kpis_load.direct(self.url, ids)
                tps = kpis_load.pgbench(self.url, ids)
            info[f"{scope}_direct"] = direct.info()
            info[f"{scope}_pgbench_tps"] = round(tps, 1)
            self.result.figures[f"load_{scope}_direct_per_s"] = direct.calls_per_s
            self.result.figures[f"load_{scope}_pgbench_per_s"] = tps
            info[f"{scope}_direct_calls_per_s"] = direct.calls_per_s
        second = None
        try:
            for processes in (1, 2):
                if processes == 2:
                    second = environment.start_second_service(
                        self.pair, self.url, self.config.log_dir
                    )
                for scope, ids in scopes.items():
                    with (
                        self.console.status(f"load: {scope}, {processes} process(es)..."),
                        self.profiler.record(f"load-{scope}-{processes}p", self._pids()),
                    ):
                        got = kpis_load.service(self.pair.service.address, self.caller, ids)
                    key = f"load_{scope}_{processes}p"
                    info[key] = got.info()
                    direct_per_s = info[f"{scope}_direct_calls_per_s"]
                    self.result.figures[f"{key}_per_s"] = got.calls_per_s
                    self.result.figures[f"{key}_p99_ms"] = got.percentile_ms(0.99)
                    self.result.figures[f"{key}_ratio"] = got.calls_per_s / direct_per_s
                    self.console.log(
                        f"load: GetKpis x {kpis_load.CALLERS} callers, {scope}, {processes} "
                        f"process(es): {got.calls_per_s:,.0f}/s, p99 "
                        f"{got.percentile_ms(0.99):.1f} ms; psycopg {direct_per_s:,.0f}/s, "
                        f"pgbench {info[f'{scope}_pgbench_tps']:,.0f}/s"
                    )
        finally:
            if second is not None:
                second.terminate(environment.STOP_TIMEOUT_S)
        self.result.info["load"] = info

    def _small_prepared(self, k: int) -> int:
        """A delivery of 10 addresses, prepared: one of the many GetKpis reads in turn."""
        emails = [pb.Recipient(email=f"r{i}@load{k}.example.com") for i in range(10)]
        delivery_id = self._created_delivery(
            pb.Target(recipients=pb.RecipientList(recipients=emails)), f"load {k}"
        )
        self._prepared(delivery_id, len(emails))
        return delivery_id

    # --- 5. ComputeStats -------------------------------------------------------------

    def stats(self) -> None:
        started = time.perf_counter()
        with self.console.status(f"ComputeStats on {self.config.messages:,}..."):
            got = self.api.ComputeStats(
                pb.ComputeStatsRequest(delivery_id=self.big),
                metadata=self.caller,
                timeout=self.config.stage_timeout,
            )
        elapsed = time.perf_counter() - started
        self.result.figures["stats_s"] = elapsed
        self.result.info["stats"] = {"repaired_counters": got.repaired_counters}
        self.console.log(
            f"ComputeStats on {self.config.messages:,}: {elapsed:.2f} s, "
            f"{got.repaired_counters} counters repaired"
        )

    # --- 6. abuse --------------------------------------------------------------------

    def abuse(self) -> None:
        info: dict[str, Any] = {}
        self.result.info["abuse"] = info
        info["watch"] = self._abuse_watch()
        info["list"] = self._abuse_list()

    def _live_deliveries(self) -> list[int]:
        """abuse.WATCHED_DELIVERIES deliveries of abuse.WATCH_RECIPIENTS each, confirmed,
        relayed and settled: SENT, within their validity, their figures no longer moving."""
        c = self.config
        n = abuse.WATCH_RECIPIENTS
        ids = []
        for k in range(abuse.WATCHED_DELIVERIES):
            emails = [f"w{k}r{i}@example.com" for i in range(n)]
            created = self.api.CreateDelivery(
                abuse.new_delivery(
                    f"bench abuse watched {k}", content(c.body_bytes), emails, VALIDITY_SECONDS
                ),
                metadata=self.caller,
                timeout=60,
            )
            delivery_id = int(created.delivery.id)
            prepared = self.api.PrepareDelivery(
                pb.PrepareDeliveryRequest(delivery_id=delivery_id), metadata=self.caller, timeout=60
            )
            if prepared.to_deliver != n or prepared.delivery.state != pb.STATE_APPROVED:
                raise RuntimeError(
                    f"delivery {delivery_id} prepared to {prepared.to_deliver} messages in state "
                    f"{pb.State.Name(prepared.delivery.state)}, expected {n} and APPROVED"
                )
            self._confirm(delivery_id)
            ids.append(delivery_id)

        def settled() -> tuple[bool, int]:
            # The stub holds feedback when the relay ran and the ingest did not: then
            # none of it comes, and none is waited for.
            outcomes = [self._outcomes(d) for d in ids]
            done = all(
                o.accepted == n
                and o.in_flight == 0
                and (self.feedback_held or o.unacknowledged_events == 0)
                for o in outcomes
            ) and all(self._state(d) == pb.STATE_SENT for d in ids)
            return done, sum(int(o.accepted) for o in outcomes)

        wait_for(
            settled,
            f"abuse set-up: {len(ids)} deliveries of {n} to watch",
            self.console,
            timeout=c.stage_timeout,
            stall=c.stall_timeout,
        )
        return ids

    def _abuse_watch(self) -> dict[str, Any]:
        assert self.pair is not None
        watched = self._live_deliveries()
        measured = watched[0]
        meter = CpuMeter(self.pair)
        before = meter.snapshot()
        quiet = self._kpis_latencies(measured)
        after = meter.snapshot()
        cpu_quiet = CpuMeter.between(before, after)
        streams = abuse.WATCH_STREAMS
        with abuse.Watchers(self.pair.service.address, self.caller, watched, streams) as w:
            with self.console.status(f"abuse: opening {streams} WatchDeployment streams..."):
                opened_s = w.open()
            before = meter.snapshot()
            loud = self._kpis_latencies(measured)
            after = meter.snapshot()
            w.check()
            updates = w.updates
        cpu_watched = CpuMeter.between(before, after)
        p99_quiet, p99_loud = percentile(quiet, 0.99), percentile(loud, 0.99)
        figures = self.result.figures
        figures["abuse_kpis_p99_ms_quiet"] = p99_quiet
        figures["abuse_kpis_p99_ms_watched"] = p99_loud
        figures["abuse_watch_p99_ratio"] = p99_loud / p99_quiet
        self.console.log(
            f"abuse: GetKpis p99 {p99_quiet:.2f} ms without watchers, {p99_loud:.2f} ms with "
            f"{streams} streams open on {len(watched)} deliveries (all open in {opened_s:.1f} s): "
            f"x {p99_loud / p99_quiet:.2f}"
        )
        return {
            "streams": streams,
            "deliveries": len(watched),
            "recipients_each": abuse.WATCH_RECIPIENTS,
            "measured_delivery": measured,
            "all_open_s": round(opened_s, 2),
            "updates_received": updates,
            "calls": len(loud),
            "without": {
                "p50_ms": round(percentile(quiet, 0.50), 3),
                "p99_ms": round(p99_quiet, 3),
                "max_ms": round(quiet[-1], 3),
                "cpu": cpu_quiet,
            },
            "with": {
                "p50_ms": round(percentile(loud, 0.50), 3),
                "p99_ms": round(p99_loud, 3),
                "max_ms": round(loud[-1], 3),
                "cpu": cpu_watched,
            },
        }

    def _abuse_list(self) -> dict[str, Any]:
        assert self.pair is not None
        service = self.pair.service
        n = abuse.LIST_DELIVERIES
        with self.console.status(f"abuse set-up: {n} deliveries of 1 MiB bodies..."):
            abuse.create_bodies(self.api, self.caller, VALIDITY_SECONDS)
        got: dict[str, Any] = {"deliveries": n, "body_bytes": abuse.LIST_BODY_BYTES}
        # The default view (unspecified: BASIC) first, so that FULL's peak cannot carry over.
        for key, view in (("basic", pb.DELIVERY_VIEW_UNSPECIFIED), ("full", pb.DELIVERY_VIEW_FULL)):
            what = f"{abuse.LIST_CALLERS} x ListDeliveries ({key})"
            with self.console.status(f"abuse: {what} for {abuse.LIST_SECONDS:g} s..."):
                listed = abuse.list_bodies(service.address, self.caller, service.pid, view)
            got[key] = listed.info()
            if listed.errors:
                raise RuntimeError(f"ListDeliveries ({key}) failed: {listed.errors[0]}")
            if listed.deliveries_per_listing != [n]:
                raise RuntimeError(
                    f"ListDeliveries ({key}) listed {listed.deliveries_per_listing} deliveries, "
                    f"expected {n}"
                )
            self.result.figures[f"abuse_list_{key}_peak_rss_mb"] = listed.peak_rss_mb
            self.result.figures[f"abuse_list_{key}_page_kib"] = listed.largest_page_kib
            self.console.log(
                f"abuse: {abuse.LIST_CALLERS} x ListDeliveries ({key}): {listed.pages:,} calls, "
                f"{listed.listings:,} listings of {n} in {listed.seconds:.1f} s; pages of "
                f"{sorted(set(listed.deliveries_per_page))} deliveries, largest "
                f"{listed.largest_page_kib:,.0f} KiB; service RSS {listed.rss_before_mb:.0f} MB "
                f"before, peak {listed.peak_rss_mb:.0f} MB"
            )
        return got

    # --- 3. the database's ceiling ---------------------------------------------------

    def ceiling(self) -> None:
        with self.console.status("ceiling: plain SQL..."):
            got = ceiling.measure(self.url, self.big, self.config.ceiling_parts)
        self.result.info["ceiling"] = got.info()
        ingest: float = self.result.info["ingest"]["events_per_s"]
        self.result.figures["ceiling_events_per_s"] = got.events_per_s
        self.result.figures["ingest_ceiling_ratio"] = ingest / got.events_per_s
        self.console.log(
            f"ceiling: {got.events:,} events, {got.messages:,} sending logs in "
            f"{got.seconds:.2f} s = {got.events_per_s:,.0f} events/s "
            f"({got.rows_per_s:,.0f} rows/s); same end state as the service: {got.same_state}"
        )
        if not got.same_state:
            raise RuntimeError(f"the ceiling ended in another state than the service: {got}")

    def stop_services(self) -> None:
        for channel in self.channels:
            channel.close()
        self.channels = []
        if self.pair is not None:
            self.pair.stop(environment.STOP_TIMEOUT_S)
            self.pair = None
