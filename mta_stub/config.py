"""The stub's settings: command-line flags, each defaulting to an environment variable."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class Settings:
    """How the stub runs; the defaults are those of a plain `python -m mta_stub`."""

    host: str = "127.0.0.1"
    port: int = 50052
    log_level: str = "INFO"
    log_json: bool = False
    # The Prometheus metrics HTTP port on host; 0: no metrics endpoint.
    metrics_port: int = 0
    retry_interval_ms: int = 1000
    engagement_delay_ms: int = 200
    grace_seconds: float = 5.0
    # A SQLite file; empty: in memory, lost when the stub stops.
    spool: str = ""

    @property
    def address(self) -> str:
        """host:port as gRPC binds it, with brackets around an IPv6 host."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"


def parse_settings(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Settings from flags, then environment variables, then defaults; exits on bad values."""
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m mta_stub", description="The Enhanced MTA stub, a gRPC server."
    )

    # argparse runs string defaults through type=, so a bad variable is reported like a flag.
    def option(
        flag: str, env: str, default: object, kind: Callable[[str], object], help_text: str
    ) -> None:
        parser.add_argument(
            flag,
            default=environ.get(env, str(default)),
            type=kind,
            help=f"{help_text} (env {env}, default {default})",
        )

    option("--host", "MTA_HOST", defaults.host, str, "interface to listen on")
    option("--port", "MTA_PORT", defaults.port, _port, "port to listen on; 0 picks a free one")
    option("--log-level", "LOG_LEVEL", defaults.log_level, _log_level, "logging level")
    # A switch: its variable is on unless empty or 0, as for the delivery service.
    parser.add_argument(
        "--log-json",
        action="store_true",
        default=environ.get("LOG_JSON", "") not in ("", "0"),
        help="JSON log lines (env LOG_JSON, default off)",
    )
    option(
        "--metrics-port",
        "MTA_METRICS_PORT",
        defaults.metrics_port,
        _port,
        "Prometheus metrics HTTP port; 0: off",
    )
    option(
        "--retry-interval-ms",
        "MTA_RETRY_INTERVAL_MS",
        defaults.retry_interval_ms,
        _positive_int,
        "milliseconds between two attempts of a soft-bouncing message",
    )
    option(
        "--engagement-delay-ms",
        "MTA_ENGAGEMENT_DELAY_MS",
        defaults.engagement_delay_ms,
        _non_negative_int,
        "milliseconds between delivery and open, and open and click",
    )
    option(
        "--grace",
        "MTA_GRACE_SECONDS",
        defaults.grace_seconds,
        _non_negative_float,
        "seconds that calls in progress get to finish on shutdown",
    )
    parser.add_argument(
        "--spool",
        metavar="PATH",
        default=environ.get("MTA_SPOOL", defaults.spool),
        help="SQLite file keeping what the stub acknowledged (messages, schedule, unacknowledged"
        " events, outcomes, scenario) across restarts and kill -9; created if missing"
        " (env MTA_SPOOL, default: in memory)",
    )
    args = parser.parse_args(argv)
    return Settings(
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_json=args.log_json,
        metrics_port=args.metrics_port,
        retry_interval_ms=args.retry_interval_ms,
        engagement_delay_ms=args.engagement_delay_ms,
        grace_seconds=args.grace,
        spool=args.spool,
    )


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, not {value}")
    return value


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    # Written so that NaN fails too.
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level
