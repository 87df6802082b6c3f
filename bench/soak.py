"""`python -m bench.soak` (`make soak`): deliveries back to back for a given time, under the
stub's seeded mix with all its faults on, sampling what must stay flat.

    python -m bench.soak [--minutes 60] [--recipients 20000] [--sample-seconds 60]
                         [--output .data/soak/<time>/samples.jsonl]

One database (new, on the embedded PostgreSQL unless DATABASE_URL is set), one stub and
one delivery service as processes (as the benchmark starts them), for the whole run. Each
delivery: N profiles of its own (COPY), CreateDelivery to their segment, PrepareDelivery,
ConfirmSend, wait until FINISHED (its validity is short), then check it exact against the
stub's record; then the next. No delivery starts after --minutes; the last one finishes.

Every --sample-seconds: both processes' RSS and open file descriptors, the database's
sessions, the sizes of the tables that grow with the traffic and their indexes, the
database's size, GetKpis p99 over 200 calls on the live delivery, and the feedback events
applied per second since the last sample (the service's metrics). One JSON line per sample
in --output, a line of the table on the terminal; at the end the summary (summary.json
beside the samples, each delivery's check in deliveries.jsonl). Exit 1 if a delivery was
not exact or did not finish.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import psycopg
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc
from rich.console import Console
from rich.table import Table

from bench import environment, soak_report
from bench.run import Stalled, content, percentile
from bench.sql import q
from mta_stub import presets
from tools.pair import Pair
from tools.processes import REPO_ROOT, ServerProcessError

# The seeded mix as it is (soft bounces until expiry included: the validity end matters).
MIX = presets.SEEDED_MIX
# Every fault of the stub, each at a modest rate: every event sent twice (the fault has
# no rate), shuffled within windows of 20, the stream dropped every 50 batches, each
# batch delayed up to 100 ms.
FAULTS = mta.Faults(
    duplicate_events=True, reorder_window=20, drop_stream_every=50, max_delay_ms=100
)
# A soft bounce until expiry bounces again at every retry: at the benchmark's 50 ms that
# is 1,200 events a message in a 60 s validity. At 1 s, 60.
RETRY_INTERVAL_MS = 1000
VALIDITY_S = 60
# What the event feed, the feedback event log and the stub's records keep beyond a
# delivery's validity: short, so that their retention applies within the hour (a week
# by default) and the tables it prunes are seen to stop growing.
RETENTION_S = 300
# The service's default grace for late feedback after the validity (--finalize-grace).
FINALIZE_GRACE_S = 10
# Beyond validity + grace, a delivery that is not FINISHED has stalled.
FINISH_MARGIN_S = 180
KPIS_CALLS = 200
POLL_S = 0.5
APPLIED = "delivery_feedback_events_applied_total"


@dataclasses.dataclass(frozen=True)
class Options:
    minutes: float
    recipients: int
    sample_seconds: float
    output: Path
    validity_seconds: int
    body_bytes: int
    keep_database: bool
    retention_seconds: int = RETENTION_S


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def scrape(port: int, name: str) -> float | None:
    """A counter's value from the service's metrics endpoint; None if it cannot be read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def fields(message: Message, names: tuple[str, ...] | None = None) -> dict[str, int]:
    """A proto message's integer fields (or those named) as a dict."""
    return {
        f.name: int(getattr(message, f.name))
        for f in message.DESCRIPTOR.fields
        if (names is None or f.name in names) and f.type != f.TYPE_MESSAGE
    }


class Soak:
    def __init__(self, options: Options, server: str, console: Console) -> None:
        self.o = options
        self.server = server
        self.console = console
        self.name = f"soak_{os.getpid()}"
        self.url = ""
        self.pair: Pair | None = None
        self.channels: list[grpc.Channel] = []
        self.api: Any = None
        self.mta: Any = None
        self.caller: list[tuple[str, str]] = []
        self.metrics_port = 0
        self.started = 0.0
        self.next_sample = 0.0
        self.live = 0
        self.last_applied: tuple[float, float] | None = None
        self.samples: list[dict[str, Any]] = []
        self.checks: list[soak_report.Check] = []
        self.failure = ""

    # --- the run ---------------------------------------------------------------------

    def run(self) -> None:
        o = self.o
        o.output.parent.mkdir(parents=True, exist_ok=True)
        self.console.print(f"samples: {o.output}; service and stub logs beside it")
        self._set_up()
        self.console.print(soak_report.header())
        self.started = time.monotonic()
        self.next_sample = self.started
        self._maybe_sample()
        end = self.started + 60 * o.minutes
        k = 0
        try:
            while time.monotonic() < end:
                check = self._delivery(k)
                self.checks.append(check)
                with (o.output.parent / "deliveries.jsonl").open("a") as f:
                    f.write(json.dumps(check.as_json()) + "\n")
                if not check.exact:
                    self.console.print(
                        f"[red]delivery {check.delivery_id} not exact: {check.mismatches}, "
                        f"{check.repaired_counters} counters repaired, final {check.final}[/red]"
                    )
                k += 1
        except (Stalled, ServerProcessError, TimeoutError, RuntimeError, grpc.RpcError,
                psycopg.Error) as err:  # fmt: skip
            self.failure = f"{type(err).__name__}: {err}"
            self.console.print(f"[red]soak stopped: {self.failure}[/red]")
        self.next_sample = time.monotonic()
        self._maybe_sample()

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        if self.pair is not None:
            self.pair.stop(environment.STOP_TIMEOUT_S)
            self.pair = None
        if self.url and not self.o.keep_database:
            environment.drop_database(self.server, self.name)

    def _set_up(self) -> None:
        self.url = environment.create_database(self.server, self.name)
        self.caller = environment.create_caller(self.url)
        self.metrics_port = _free_port()
        self.pair = environment.start_pair(
            self.url,
            self.o.output.parent,
            retry_interval_ms=RETRY_INTERVAL_MS,
            service_args=(
                "--metrics-port", str(self.metrics_port),
                "--feed-retention-beyond-validity", str(self.o.retention_seconds),
                "--sending-log-retention-beyond-validity", str(self.o.retention_seconds),
                "--feed-cleanup-interval", str(min(60, self.o.retention_seconds)),
            ),
            stub_args=("--retention-seconds", str(self.o.retention_seconds)),
        )  # fmt: skip
        service = grpc.insecure_channel(self.pair.service.address)
        stub = grpc.insecure_channel(self.pair.stub.address)
        self.channels = [service, stub]
        self.api = pb_grpc.DeliveryServiceStub(service)
        self.mta = mta_grpc.MtaServiceStub(stub)
        self.mta.SetScenario(mta.SetScenarioRequest(mix=MIX, faults=FAULTS), timeout=10)

    # --- one delivery ----------------------------------------------------------------

    def _delivery(self, k: int) -> soak_report.Check:
        o, n = self.o, self.o.recipients
        segment = f"soak{k}"
        environment.load_profiles(self.url, segment, k * n, n)
        created = self.api.CreateDelivery(
            pb.CreateDeliveryRequest(
                label=f"soak {k}",
                content=content(o.body_bytes),
                target=pb.Target(segment=segment),
                validity_period=duration_pb2.Duration(seconds=o.validity_seconds),
                feedback_mode=pb.FEEDBACK_MODE_EFS,
            ),
            metadata=self.caller,
            timeout=60,
        )
        delivery_id = int(created.delivery.id)
        started = time.monotonic()
        prepared = self.api.PrepareDelivery(
            pb.PrepareDeliveryRequest(delivery_id=delivery_id), metadata=self.caller, timeout=300
        )
        if prepared.to_deliver != n or prepared.delivery.state != pb.STATE_APPROVED:
            raise RuntimeError(
                f"delivery {delivery_id} prepared to {prepared.to_deliver} messages in state "
                f"{pb.State.Name(prepared.delivery.state)}, expected {n} and APPROVED"
            )
        self.api.ConfirmSend(
            pb.ConfirmSendRequest(delivery_id=delivery_id), metadata=self.caller, timeout=60
        )
        self.live = delivery_id
        self._wait_finished(delivery_id, k)
        check = self._check(delivery_id)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(q("soak_forget_profiles"), {"segment": segment})
        return dataclasses.replace(check, seconds=round(time.monotonic() - started, 1))

    def _wait_finished(self, delivery_id: int, k: int) -> None:
        deadline = time.monotonic() + self.o.validity_seconds + FINALIZE_GRACE_S + FINISH_MARGIN_S
        request = pb.GetDeliveryRequest(delivery_id=delivery_id)
        with self.console.status(f"delivery {k + 1} ({delivery_id})...") as status:
            while True:
                got = self.api.GetDelivery(request, metadata=self.caller, timeout=10)
                state = got.delivery.state
                if state == pb.STATE_FINISHED:
                    return
                if time.monotonic() > deadline:
                    raise Stalled(
                        f"delivery {delivery_id} not FINISHED {FINISH_MARGIN_S} s after its "
                        f"validity and grace (state {pb.State.Name(state)})"
                    )
                status.update(f"delivery {k + 1} ({delivery_id}): {pb.State.Name(state)}")
                self._maybe_sample()
                time.sleep(POLL_S)

    def _check(self, delivery_id: int) -> soak_report.Check:
        outcome = self.mta.GetOutcomes(mta.GetOutcomesRequest(delivery_id=delivery_id), timeout=10)
        kpis = self.api.GetKpis(
            pb.GetKpisRequest(delivery_id=delivery_id), metadata=self.caller, timeout=10
        ).kpis
        stats = self.api.ComputeStats(
            pb.ComputeStatsRequest(delivery_id=delivery_id), metadata=self.caller, timeout=120
        )
        params = {"delivery_id": delivery_id}
        with psycopg.connect(self.url, autocommit=True) as conn:
            logs = conn.execute(q("soak_logs"), params).fetchone()
            history = conn.execute(q("soak_history"), params).fetchone()
        assert logs is not None and history is not None
        history_names = ("delivered_events", "signal_delivered", "signal_hard",
                         "soft_addresses", "soft_changed", "addresses_quarantined")  # fmt: skip
        return soak_report.check_delivery(
            delivery_id,
            self.o.recipients,
            logs={"total": logs[0], "final": logs[1]},
            outcome=fields(outcome),
            kpis=fields(kpis, soak_report.KPI_FIELDS),
            recount=fields(stats.kpis, soak_report.KPI_FIELDS),
            repaired_counters=int(stats.repaired_counters),
            final=bool(kpis.final),
            history=dict(zip(history_names, (int(v) for v in history), strict=True)),
        )

    # --- samples ---------------------------------------------------------------------

    def _maybe_sample(self) -> None:
        if time.monotonic() < self.next_sample:
            return
        sample = self._sample()
        self.samples.append(sample)
        with self.o.output.open("a") as f:
            f.write(json.dumps(sample) + "\n")
        self.console.print(soak_report.row(sample))
        self.next_sample += self.o.sample_seconds
        # After a long step (a check, a load): the next sample a period from now.
        self.next_sample = max(self.next_sample, time.monotonic() + 1)

    def _sample(self) -> dict[str, Any]:
        assert self.pair is not None
        service, stub = self.pair.service.pid, self.pair.stub.pid
        now = time.monotonic()
        sample: dict[str, Any] = {
            "t": round(now - self.started, 1),
            "time": environment.now_iso(),
            "deliveries_completed": len(self.checks),
            "live_delivery": self.live or None,
            "service_rss_mb": environment.memory_kb(service).get("VmRSS", 0) / 1024,
            "stub_rss_mb": environment.memory_kb(stub).get("VmRSS", 0) / 1024,
            "service_fds": environment.open_fds(service),
            "stub_fds": environment.open_fds(stub),
        }
        with psycopg.connect(self.url, autocommit=True) as conn:
            connections = conn.execute(q("soak_connections")).fetchone()
            sizes = conn.execute(q("soak_sizes"), {"tables": list(soak_report.TABLES)}).fetchall()
            database = conn.execute(q("soak_database_size")).fetchone()
        assert connections is not None and database is not None
        sample["db_connections"] = int(connections[0])
        sample["database_mb"] = round(database[0] / 2**20, 2)
        for name, total, indexes, dead in sizes:
            sample[f"{name}_mb"] = round(total / 2**20, 2)
            sample[f"{name}_index_mb"] = round(indexes / 2**20, 2)
            sample[f"{name}_dead_tuples"] = int(dead)
        sample["kpis_p99_ms"] = self._kpis_p99() if self.live else None
        applied = scrape(self.metrics_port, APPLIED)
        sample["events_applied"] = applied
        sample["ingest_per_s"] = None
        if applied is not None:
            if self.last_applied is not None:
                before_t, before = self.last_applied
                sample["ingest_per_s"] = round((applied - before) / max(now - before_t, 1e-9), 1)
            self.last_applied = (now, applied)
        for key in ("service_rss_mb", "stub_rss_mb"):
            sample[key] = round(sample[key], 1)
        return sample

    def _kpis_p99(self) -> float:
        """p99 in ms of KPIS_CALLS sequential GetKpis on the live delivery."""
        request = pb.GetKpisRequest(delivery_id=self.live)
        latencies = []
        for _ in range(KPIS_CALLS):
            started = time.perf_counter_ns()
            self.api.GetKpis(request, metadata=self.caller, timeout=5)
            latencies.append((time.perf_counter_ns() - started) / 1e6)
        return round(percentile(sorted(latencies), 0.99), 3)


# --- the command -----------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--minutes", type=_positive_float, default=60.0,
                   help="no delivery starts after this (default 60)")  # fmt: skip
    p.add_argument("--recipients", type=_positive, default=20_000, help="per delivery")
    p.add_argument("--sample-seconds", type=_positive_float, default=60.0,
                   help="seconds between samples (default 60)")  # fmt: skip
    p.add_argument("--output", type=Path, default=None,
                   help="JSON lines (default .data/soak/<time>/samples.jsonl)")  # fmt: skip
    p.add_argument("--validity-seconds", type=_positive, default=VALIDITY_S,
                   help=f"each delivery's validity (default {VALIDITY_S})")  # fmt: skip
    p.add_argument("--body-bytes", type=_positive, default=4096, help="HTML body of each message")
    p.add_argument("--keep-database", action="store_true", help="do not drop the soak's database")
    p.add_argument("--retention-seconds", type=_positive, default=RETENTION_S,
                   help="what the feed, the feedback event log and the stub's records keep "
                   f"beyond a delivery's validity (default {RETENTION_S})")  # fmt: skip
    return p.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through the finally: processes stopped, database dropped.
    sys.exit(128 + signum)


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    console.print(
        f"deliveries completed {summary['deliveries_completed']} "
        f"({summary['deliveries_exact']} exact), {summary['messages']:,} messages; "
        f"lost {summary['lost']}, double-counted {summary['double_counted']}, "
        f"counters repaired {summary['counters_repaired']}; "
        f"{summary['samples']} samples over {summary['duration_s'] / 60:.1f} min"
    )
    trends = Table(title="trends (least squares over every sample)")
    for column in ("series", "first", "last", "slope per hour", "% of mean per hour"):
        trends.add_column(column, justify="right")
    for key, got in summary["trends"].items():
        trends.add_row(key, *(f"{got[k]}" for k in ("first", "last", "slope_per_hour",
                                                    "slope_percent_of_mean_per_hour")))  # fmt: skip
    console.print(trends)
    windows = Table(title="first and last windows (means)")
    for column in ("series", "window s", "first", "last", "max"):
        windows.add_column(column, justify="right")
    for key, got in summary["windows"].items():
        windows.add_row(key, *(f"{got[k]}" for k in ("window_s", "first", "last", "max")))
    console.print(windows)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    console = Console()
    output: Path = args.output or (
        REPO_ROOT / ".data" / "soak" / time.strftime("%Y%m%d-%H%M%S") / "samples.jsonl"
    )
    options = Options(
        minutes=args.minutes,
        recipients=args.recipients,
        sample_seconds=args.sample_seconds,
        output=output.resolve(),
        validity_seconds=args.validity_seconds,
        body_bytes=args.body_bytes,
        keep_database=args.keep_database,
        retention_seconds=args.retention_seconds,
    )
    server, where = environment.server_url()
    machine = environment.machine_info(server, where)
    console.print(
        f"soak: {options.minutes:g} min of {options.recipients:,}-recipient deliveries "
        f"(validity {options.validity_seconds} s), a sample every {options.sample_seconds:g} s; "
        f"{machine['nproc']} cores, PostgreSQL {machine['postgresql']} ({where})"
    )
    soak = Soak(options, server, console)
    interrupted = False
    try:
        soak.run()
    except KeyboardInterrupt:
        interrupted = True
        soak.failure = "interrupted"
    except (ServerProcessError, TimeoutError, RuntimeError, grpc.RpcError, psycopg.Error) as err:
        # Before the first delivery (set-up): the loop catches its own.
        soak.failure = f"{type(err).__name__}: {err}"
        console.print(f"[red]soak failed: {soak.failure}[/red]\nlogs: {options.output.parent}")
    finally:
        duration = time.monotonic() - soak.started if soak.started else 0.0
        soak.close()
    summary = soak_report.summarize(soak.samples, soak.checks, duration)
    summary["failure"] = soak.failure or None
    document = {
        "date": environment.now_iso(),
        "git": environment.git_info(),
        "machine": machine,
        "config": {
            "minutes": options.minutes,
            "recipients": options.recipients,
            "sample_seconds": options.sample_seconds,
            "validity_seconds": options.validity_seconds,
            "body_bytes": options.body_bytes,
            "mix": {f.name: getattr(MIX, f.name) for f in MIX.DESCRIPTOR.fields},
            "faults": {f.name: getattr(FAULTS, f.name) for f in FAULTS.DESCRIPTOR.fields},
            "stub_retry_interval_ms": RETRY_INTERVAL_MS,
            "stub_engagement_delay_ms": environment.ENGAGEMENT_DELAY_MS,
        },
        "summary": summary,
    }
    summary_path = options.output.parent / "summary.json"
    summary_path.write_text(json.dumps(document, indent=2) + "\n")
    print_summary(console, summary)
    console.print(f"written: {options.output}, {summary_path}")
    if interrupted:
        return 130
    exact = not soak.failure and bool(soak.checks) and all(c.exact for c in soak.checks)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
