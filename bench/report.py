"""The figures, their targets, the table, and bench/results.json."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import abuse, kpis_load


@dataclass(frozen=True)
class Figure:
    key: str
    stage: str
    label: str
    unit: str
    # The target, and whether the figure must be at least (True) or below/at most it.
    target: float | None = None
    at_least: bool = True
    strict: bool = False
    decimals: int = 0

    def target_text(self) -> str:
        if self.target is None:
            return ""
        sign = (">" if self.strict else "≥") if self.at_least else ("<" if self.strict else "≤")
        return f"{sign} {self.format(self.target)}"

    def format(self, value: float) -> str:
        return f"{value:,.{self.decimals}f}"

    def passes(self, value: float) -> bool | None:
        if self.target is None:
            return None
        if self.at_least:
            return value > self.target if self.strict else value >= self.target
        return value < self.target if self.strict else value <= self.target


def figures(messages: int, small: int) -> list[Figure]:
    big, little = f"{messages:,}", f"{small:,}"
    callers = f"GetKpis x {kpis_load.CALLERS} callers"
    streams = abuse.WATCH_STREAMS
    lists = (
        f"{abuse.LIST_CALLERS} x ListDeliveries of {abuse.LIST_DELIVERIES} "
        f"x {abuse.LIST_BODY_BYTES >> 20} MiB"
    )
    return [
        *(
            figure
            for kind in ("segment", "list")
            for figure in (
                Figure(
                    f"prepare_{kind}_s",
                    "prepare",
                    f"PrepareDelivery, a {kind} of {big}",
                    "s",
                    5,
                    at_least=False,
                    decimals=2,
                ),
                Figure(
                    f"prepare_{kind}_ceiling_s",
                    "prepare",
                    f"Preparation ceiling, {kind}: plain SQL, same rows",
                    "s",
                    decimals=2,
                ),
                Figure(
                    f"prepare_{kind}_ceiling_ratio",
                    "prepare",
                    f"Preparation ceiling ÷ PrepareDelivery, {kind} (time)",
                    "",
                    0.5,
                    decimals=2,
                ),
            )
        ),
        Figure("relay_messages_per_s", "relay", f"Relay of {big}", "msg/s", 30_000),
        Figure(
            "relay_peak_rss_mb",
            "relay",
            "Relay: delivery service peak RSS",
            "MB",
            300,
            at_least=False,
            strict=True,
        ),
        Figure(
            "ingest_events_per_s", "ingest", f"Feedback ingest ({big} msgs)", "events/s", 25_000
        ),
        Figure("feed_events_per_s", "ingest", "Event feed: served to one consumer", "events/s"),
        Figure(
            "feed_lag_p99_s", "ingest", "Event feed: lag p99, write to receipt", "s", decimals=2
        ),
        Figure("ceiling_events_per_s", "ceiling", "Ceiling: plain SQL, same rows", "events/s"),
        Figure("ingest_ceiling_ratio", "ceiling", "Ingest ÷ ceiling", "", 0.5, decimals=2),
        Figure("kpis_p50_ms_small", "kpis", f"GetKpis p50, {little} msgs", "ms", None, decimals=2),
        Figure(
            "kpis_p99_ms_small", "kpis", f"GetKpis p99, {little} msgs", "ms", 5, False, decimals=2
        ),
        Figure("kpis_p50_ms_big", "kpis", f"GetKpis p50, {big} msgs", "ms", None, decimals=2),
        Figure("kpis_p99_ms_big", "kpis", f"GetKpis p99, {big} msgs", "ms", 5, False, decimals=2),
        *(
            figure
            for scope, label in (("one", f"one delivery of {big}"), ("many", "1,000 deliveries"))
            for figure in (
                Figure(
                    f"load_{scope}_direct_per_s",
                    "load",
                    f"{callers}: its statement by psycopg, {label}",
                    "calls/s",
                ),
                Figure(
                    f"load_{scope}_pgbench_per_s",
                    "load",
                    f"{callers}: its statement by pgbench, {label}",
                    "calls/s",
                ),
                *(
                    figure
                    for processes in (1, 2)
                    for figure in (
                        Figure(
                            f"load_{scope}_{processes}p_per_s",
                            "load",
                            f"{callers}, {label}, {processes} process(es)",
                            "calls/s",
                        ),
                        Figure(
                            f"load_{scope}_{processes}p_p99_ms",
                            "load",
                            f"{callers}, {label}, {processes} process(es): p99",
                            "ms",
                            20,
                            at_least=False,
                            decimals=1,
                        ),
                        Figure(
                            f"load_{scope}_{processes}p_ratio",
                            "load",
                            f"{callers}, {label}, {processes} process(es) ÷ psycopg",
                            "",
                            0.5,
                            decimals=2,
                        ),
                    )
                ),
            )
        ),
        Figure("stats_s", "stats", f"ComputeStats on {big}", "s", 3, False, decimals=2),
        Figure(
            "abuse_kpis_p99_ms_quiet", "abuse", "Abuse: GetKpis p99, no watchers", "ms", decimals=2
        ),
        Figure(
            "abuse_kpis_p99_ms_watched",
            "abuse",
            f"Abuse: GetKpis p99, {streams} watch streams open",
            "ms",
            decimals=2,
        ),
        Figure(
            "abuse_watch_p99_ratio",
            "abuse",
            "Abuse: GetKpis p99 with ÷ without watchers",
            "",
            1.5,
            at_least=False,
            decimals=2,
        ),
        Figure(
            "abuse_list_basic_peak_rss_mb",
            "abuse",
            f"Abuse: service peak RSS, {lists} (basic)",
            "MB",
            200,
            at_least=False,
            strict=True,
        ),
        Figure(
            "abuse_list_basic_page_kib",
            "abuse",
            "Abuse: largest ListDeliveries page (basic)",
            "KiB",
        ),
        Figure(
            "abuse_list_full_peak_rss_mb",
            "abuse",
            f"Abuse: service peak RSS, {lists} (full)",
            "MB",
            200,
            at_least=False,
            strict=True,
        ),
        Figure(
            "abuse_list_full_page_kib", "abuse", "Abuse: largest ListDeliveries page (full)", "KiB"
        ),
    ]


@dataclass(frozen=True)
class Row:
    figure: Figure
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def as_json(self) -> dict[str, Any]:
        f = self.figure
        return {
            "label": f.label,
            "unit": f.unit,
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "runs": self.values,
            "target": f.target_text() or None,
            "pass": f.passes(self.median),
        }


def summarize(
    results: Sequence[dict[str, float]], messages: int, small: int, stages: set[str]
) -> list[Row]:
    rows = []
    for figure in figures(messages, small):
        if figure.stage not in stages:
            continue
        values = [r[figure.key] for r in results if figure.key in r]
        if values:
            rows.append(Row(figure, values))
    return rows


def table(rows: Sequence[Row], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("Figure")
    t.add_column("Median", justify="right")
    t.add_column("Min to max", justify="right")
    t.add_column("Unit")
    t.add_column("Target", justify="right")
    t.add_column("Result")
    for row in rows:
        f = row.figure
        verdict = f.passes(row.median)
        result = "" if verdict is None else "[green]pass[/green]" if verdict else "[red]FAIL[/red]"
        t.add_row(
            f.label,
            f.format(row.median),
            f"{f.format(min(row.values))} to {f.format(max(row.values))}",
            f.unit,
            f.target_text(),
            result,
        )
    return t


def markdown(rows: Sequence[Row]) -> str:
    """The same table in Markdown, for docs/performance.md."""
    lines = [
        "| figure | median | min to max | target | result |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        f = row.figure
        verdict = f.passes(row.median)
        unit = f" {f.unit}" if f.unit else ""
        lines.append(
            f"| {f.label} | {f.format(row.median)}{unit} | "
            f"{f.format(min(row.values))} to {f.format(max(row.values))} | "
            f"{f.target_text()}{unit if f.target is not None else ''} | "
            f"{'' if verdict is None else 'pass' if verdict else '**FAIL**'} |"
        )
    return "\n".join(lines)


def print_table(console: Console, rows: Sequence[Row], title: str) -> None:
    console.print(table(rows, title))


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Written whole or not at all: through a temporary file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
