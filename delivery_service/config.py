"""The delivery service's settings: each a flag and an environment variable
(grpc_common.settings reads and checks them)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar

from pydantic import Field

from grpc_common.settings import (
    Duration,
    Port,
    PositiveDuration,
    PositiveSeconds,
    Seconds,
    ServerSettings,
    setting,
)


class Settings(ServerSettings):
    """The delivery service: confirm send, relay to the MTA, feedback, KPIs."""

    prog: ClassVar[str] = "python -m delivery_service"
    description: ClassVar[str] = (
        "The delivery service: confirm send, relay to the MTA, feedback, KPIs. "
        "`python -m delivery_service create-operator --help` adds an operator."
    )

    host: str = setting("127.0.0.1", env="DELIVERY_HOST", help="address to listen on")
    port: Port = setting(50051, env="DELIVERY_PORT", help="gRPC port; 0 picks a free one")
    mta_address: str = setting("127.0.0.1:50052", env="MTA_ADDRESS", help="the MTA, host:port")
    database_url: Annotated[str, Field(min_length=1)] = setting(
        env="DATABASE_URL", help="PostgreSQL URL; migrations are applied at start"
    )
    stats_interval: PositiveDuration = setting(
        dt.timedelta(hours=1),
        env="STATS_INTERVAL_SECONDS",
        help="seconds between refreshes of Open % and Click %",
    )
    finalize_grace: Duration = setting(
        dt.timedelta(seconds=10),
        env="FINALIZE_GRACE_SECONDS",
        help="seconds after the validity ends for late feedback, before the figures are final",
    )
    tick: PositiveSeconds = setting(
        0.25, env="SCHEDULER_TICK_SECONDS", help="seconds between scheduler rounds"
    )
    pool_size: Annotated[int, Field(ge=1)] = setting(
        20, env="DB_POOL_SIZE", help="largest number of database connections"
    )
    metrics_port: Port = setting(0, env="METRICS_PORT", help="Prometheus metrics HTTP port; 0: off")
    grace: Seconds = setting(
        5.0, env="SHUTDOWN_GRACE_SECONDS", help="seconds calls in progress get on SIGTERM"
    )
