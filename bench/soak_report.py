"""The soak's arithmetic, apart from any process or database: each delivery's check
against the stub's record, the slope of a series per hour, the first and last windows,
the summary, and the lines of the table. Pure functions over plain dicts (the samples as
they are written to samples.jsonl), so that tests/unit/test_soak_report.py can feed them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# The tables whose size is sampled (pg_total_relation_size, pg_indexes_size): what grows
# with every delivery and every feedback event.
TABLES = (
    "sending_logs",
    "feedback_events",
    "delivery_feed",
    "addresses",
    "address_events",
    "profiles",
)

# The series whose trend must be flat in a long run: their slope per hour is reported.
TREND_SERIES: tuple[str, ...] = (
    "service_rss_mb",
    "stub_rss_mb",
    "service_fds",
    "stub_fds",
    "db_connections",
    "database_mb",
    *(f"{table}_mb" for table in TABLES),
    *(f"{table}_index_mb" for table in TABLES),
)
# The series compared between the first and the last window of the run.
WINDOW_SERIES = ("kpis_p99_ms", "ingest_per_s")
# The first and last windows are 10 minutes long, or a third of a shorter run.
WINDOW_S = 600.0


# --- one delivery against the stub's record -------------------------------------------


@dataclass(frozen=True)
class Check:
    """One delivery's end state compared figure by figure: (what, the service's figure,
    the figure it must equal). Lost: the largest shortfall of any figure; double-counted:
    the largest excess (messages, not a sum over figures, which would count a message
    once per figure it is in)."""

    delivery_id: int
    recipients: int
    comparisons: list[tuple[str, int, int]]
    repaired_counters: int
    final: bool
    seconds: float = 0.0
    outcome: dict[str, int] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return max((max(0, want - got) for _, got, want in self.comparisons), default=0)

    @property
    def double_counted(self) -> int:
        return max((max(0, got - want) for _, got, want in self.comparisons), default=0)

    @property
    def mismatches(self) -> list[tuple[str, int, int]]:
        return [c for c in self.comparisons if c[1] != c[2]]

    @property
    def exact(self) -> bool:
        return self.final and self.repaired_counters == 0 and not self.mismatches

    def as_json(self) -> dict[str, Any]:
        got = asdict(self)
        got.update(
            lost=self.lost,
            double_counted=self.double_counted,
            exact=self.exact,
            mismatches=self.mismatches,
        )
        return got


KPI_FIELDS = ("to_deliver", "sent", "delivered", "failed", "pending", "opened", "clicked")


def check_delivery(
    delivery_id: int,
    n: int,
    *,
    logs: Mapping[str, int],
    outcome: Mapping[str, int],
    kpis: Mapping[str, int],
    recount: Mapping[str, int],
    repaired_counters: int,
    final: bool,
    history: Mapping[str, int],
) -> Check:
    """What tests/reliability/scenario.assert_exact checks, for one delivery of a database
    that holds many: every message one final status; the stub accepted each message once;
    the live KPIs = ComputeStats' recount (0 repaired) = the stub's record; each delivery
    report logged once; the address table's history as the stub's fates say (each
    delivery has addresses of its own).

    logs: total, final (sending logs of the delivery); outcome: GetOutcomes' fields;
    kpis and recount: GetKpis' and ComputeStats' KPI fields; history: delivered_events
    (feedback events of kind DELIVERED), and from address_events signal_delivered,
    signal_hard, soft_addresses, soft_changed, and addresses_quarantined.
    """
    hard, expired, delivered = outcome["hard_bounced"], outcome["expired"], outcome["delivered"]
    soft = outcome["soft_bounced"]
    comparisons = [
        ("sending logs", logs["total"], n),
        ("sending logs with a final status", logs["final"], n),
        ("accepted by the MTA", outcome["accepted"], n),
        ("MTA fates (delivered + hard + expired)", delivered + hard + expired, n),
        ("KPIs: to deliver", kpis["to_deliver"], n),
        ("KPIs: sent", kpis["sent"], n),
        ("KPIs: delivered", kpis["delivered"], delivered),
        ("KPIs: failed", kpis["failed"], hard + expired),
        ("KPIs: pending", kpis["pending"], 0),
        ("KPIs: opened", kpis["opened"], outcome["opened"]),
        ("KPIs: clicked", kpis["clicked"], outcome["clicked"]),
        *((f"KPIs = ComputeStats: {name}", kpis[name], recount[name]) for name in KPI_FIELDS),
        ("delivery reports logged", history["delivered_events"], delivered),
        ("address history: delivered", history["signal_delivered"], delivered),
        ("address history: hard bounces", history["signal_hard"], hard),
        ("address history: soft-bounced addresses", history["soft_addresses"], soft),
        ("address history: soft bounces counted", history["soft_changed"], soft),
        ("addresses quarantined", history["addresses_quarantined"], hard),
    ]
    return Check(
        delivery_id=delivery_id,
        recipients=n,
        comparisons=comparisons,
        repaired_counters=repaired_counters,
        final=final,
        outcome=dict(outcome),
    )


# --- series ---------------------------------------------------------------------------


def slope_per_hour(points: Iterable[tuple[float, float]]) -> float | None:
    """The least-squares slope of (seconds, value) points, in value per hour; None with
    fewer than two distinct times."""
    pts = [(t, v) for t, v in points if v is not None and not math.isnan(v)]
    if len(pts) < 2:
        return None
    mean_t = statistics.fmean(t for t, _ in pts)
    mean_v = statistics.fmean(v for _, v in pts)
    spread = sum((t - mean_t) ** 2 for t, _ in pts)
    if spread == 0:
        return None
    return 3600 * sum((t - mean_t) * (v - mean_v) for t, v in pts) / spread


def series(samples: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    """(t, value) of the samples that have the key with a number."""
    return [
        (float(s["t"]), float(s[key]))
        for s in samples
        if isinstance(s.get(key), int | float) and not isinstance(s.get(key), bool)
    ]


def windows(duration_s: float) -> float:
    """The length of the first and last windows: 10 minutes, or a third of a shorter run
    (a run under 30 minutes would otherwise compare overlapping windows)."""
    return WINDOW_S if duration_s >= 3 * WINDOW_S else duration_s / 3


def window_means(
    samples: Sequence[Mapping[str, Any]], key: str, duration_s: float
) -> tuple[float | None, float | None]:
    """The mean of a series over the first and over the last window of the run."""
    span = windows(duration_s)
    points = series(samples, key)
    first = [v for t, v in points if t <= span]
    last = [v for t, v in points if t >= duration_s - span]
    return (
        statistics.fmean(first) if first else None,
        statistics.fmean(last) if last else None,
    )


def summarize(
    samples: Sequence[Mapping[str, Any]], checks: Sequence[Check], duration_s: float
) -> dict[str, Any]:
    """The run in figures: deliveries, lost and double-counted messages, each trend's
    slope per hour (and as a % of its mean), the windows' means."""
    trends: dict[str, dict[str, float | None]] = {}
    for key in TREND_SERIES:
        points = series(samples, key)
        if not points:
            continue
        slope = slope_per_hour(points)
        mean = statistics.fmean(v for _, v in points)
        trends[key] = {
            "first": points[0][1],
            "last": points[-1][1],
            "mean": round(mean, 3),
            "slope_per_hour": None if slope is None else round(slope, 3),
            "slope_percent_of_mean_per_hour": (
                None if slope is None or mean == 0 else round(100 * slope / mean, 2)
            ),
        }
    compared: dict[str, dict[str, float | None]] = {}
    span = windows(duration_s)
    for key in WINDOW_SERIES:
        first, last = window_means(samples, key, duration_s)
        compared[key] = {
            "window_s": round(span, 1),
            "first": None if first is None else round(first, 3),
            "last": None if last is None else round(last, 3),
            "max": max((v for _, v in series(samples, key)), default=None),
        }
    return {
        "duration_s": round(duration_s, 1),
        "samples": len(samples),
        "deliveries_completed": len(checks),
        "deliveries_exact": sum(c.exact for c in checks),
        "messages": sum(c.recipients for c in checks),
        "lost": sum(c.lost for c in checks),
        "double_counted": sum(c.double_counted for c in checks),
        "counters_repaired": sum(c.repaired_counters for c in checks),
        "not_exact": [c.delivery_id for c in checks if not c.exact],
        "trends": trends,
        "windows": compared,
    }


# --- the table as it goes -------------------------------------------------------------

# (header, key, format): one line per sample.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("min", "t", "{:>6.1f}"),
    ("done", "deliveries_completed", "{:>5d}"),
    ("svc MB", "service_rss_mb", "{:>7.1f}"),
    ("stub MB", "stub_rss_mb", "{:>7.1f}"),
    ("svc fd", "service_fds", "{:>6d}"),
    ("stub fd", "stub_fds", "{:>7d}"),
    ("conns", "db_connections", "{:>5d}"),
    ("logs MB", "sending_logs_mb", "{:>8.1f}"),
    ("events MB", "feedback_events_mb", "{:>9.1f}"),
    ("feed MB", "delivery_feed_mb", "{:>8.1f}"),
    ("db MB", "database_mb", "{:>8.1f}"),
    ("p99 ms", "kpis_p99_ms", "{:>7.2f}"),
    ("ingest/s", "ingest_per_s", "{:>9.0f}"),
)


def header() -> str:
    widths = [len(fmt.format(0)) for _, _, fmt in COLUMNS]
    return " ".join(f"{name:>{w}}" for (name, _, _), w in zip(COLUMNS, widths, strict=True))


def row(sample: Mapping[str, Any]) -> str:
    """A sample as one line under header(); '-' for what it lacks."""
    cells = []
    for _, key, fmt in COLUMNS:
        width = len(fmt.format(0))
        value = sample.get(key)
        if key == "t" and value is not None:
            value = value / 60
        cells.append("-".rjust(width) if value is None else fmt.format(value))
    return " ".join(cells)
