"""The delivery service's settings: each a flag, with an environment variable as default."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    mta_address: str
    database_url: str
    stats_interval: dt.timedelta
    finalize_grace: dt.timedelta
    tick: float
    log_level: str
    log_json: bool
    metrics_port: int
    grace: float
    pool_size: int


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m delivery_service",
        description="The delivery service: confirm send, relay to the MTA, feedback, KPIs.",
    )
    p.add_argument("--host", default=_env("DELIVERY_HOST", "127.0.0.1"), help="[DELIVERY_HOST]")
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("DELIVERY_PORT", "50051")),
        help="gRPC port; 0 picks a free one [DELIVERY_PORT]",
    )
    p.add_argument(
        "--mta-address", default=_env("MTA_ADDRESS", "127.0.0.1:50052"), help="[MTA_ADDRESS]"
    )
    p.add_argument(
        "--database-url",
        default=_env("DATABASE_URL", ""),
        help="PostgreSQL URL [DATABASE_URL]",
    )
    p.add_argument(
        "--stats-interval",
        type=float,
        default=float(_env("STATS_INTERVAL_SECONDS", "3600")),
        help="seconds between refreshes of Open %% and Click %% [STATS_INTERVAL_SECONDS]",
    )
    p.add_argument(
        "--finalize-grace",
        type=float,
        default=float(_env("FINALIZE_GRACE_SECONDS", "10")),
        help="seconds after the validity ends for late feedback, before the figures are "
        "final [FINALIZE_GRACE_SECONDS]",
    )
    p.add_argument(
        "--tick",
        type=float,
        default=float(_env("SCHEDULER_TICK_SECONDS", "0.25")),
        help="seconds between scheduler rounds [SCHEDULER_TICK_SECONDS]",
    )
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"), help="[LOG_LEVEL]")
    p.add_argument(
        "--log-json",
        action="store_true",
        default=_env("LOG_JSON", "") not in ("", "0"),
        help="JSON log lines [LOG_JSON]",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "0")),
        help="Prometheus metrics port; 0 = off [METRICS_PORT]",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=float(_env("SHUTDOWN_GRACE_SECONDS", "5")),
        help="seconds in-flight calls get on SIGTERM [SHUTDOWN_GRACE_SECONDS]",
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=int(_env("DB_POOL_SIZE", "20")),
        help="largest number of database connections [DB_POOL_SIZE]",
    )
    return p


def from_args(argv: list[str] | None = None) -> Settings:
    p = parser()
    a = p.parse_args(argv)
    if not a.database_url:
        p.error("a database is required: --database-url or DATABASE_URL")
    return Settings(
        host=a.host,
        port=a.port,
        mta_address=a.mta_address,
        database_url=a.database_url,
        stats_interval=dt.timedelta(seconds=a.stats_interval),
        finalize_grace=dt.timedelta(seconds=a.finalize_grace),
        tick=a.tick,
        log_level=a.log_level.upper(),
        log_json=a.log_json,
        metrics_port=a.metrics_port,
        grace=a.grace,
        pool_size=a.pool_size,
    )
