"""The delivery service's settings: each a flag and an environment variable
(grpc_common.settings reads and checks them)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Annotated, ClassVar, Self

from pydantic import Field, model_validator

from delivery_service.domain import alerts, quarantine
from grpc_common.settings import (
    Count,
    Duration,
    Port,
    PositiveDuration,
    PositiveSeconds,
    Seconds,
    ServerSettings,
    setting,
    target_is_loopback,
)

# A share, from 0 to 1.
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]

if TYPE_CHECKING:
    import grpc

log = logging.getLogger(__name__)


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
    feedback_defer: PositiveSeconds = setting(
        30.0,
        env="FEEDBACK_DEFER_SECONDS",
        help="seconds feedback that may yet fit the relay record (a relay not recorded yet, "
        "an open ahead of its delivery report) waits, unacknowledged, before it is refused",
    )
    bootstrap_token_file: str = setting(
        "",
        env="BOOTSTRAP_TOKEN_FILE",
        help="when no operator holds the role admin: create `admin` with the token this "
        "file holds, or with a new one written to it (mode 0600); empty: off",
    )
    migrate: bool = setting(
        True,
        env="DATABASE_MIGRATE",
        help="apply the migrations at start; off when the service connects as a role that "
        "may not change the schema (they are applied beforehand, as its owner)",
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
    significant_error_interval: PositiveDuration = setting(
        dt.timedelta(days=1),
        env="SIGNIFICANT_ERROR_INTERVAL_SECONDS",
        help="seconds after an address's last counted soft error before another one counts",
    )
    quarantine_threshold: Annotated[int, Field(ge=1, le=1000)] = setting(
        5,
        env="QUARANTINE_THRESHOLD",
        help="counted soft errors that put an address in quarantine",
    )
    erroneous_release: PositiveDuration = setting(
        dt.timedelta(days=10),
        env="ERRONEOUS_RELEASE_SECONDS",
        help="seconds without a counted error after which an erroneous address is valid again",
    )
    mailbox_full_release: PositiveDuration = setting(
        dt.timedelta(days=30),
        env="MAILBOX_FULL_RELEASE_SECONDS",
        help="the same, when the address's last error was a full mailbox",
    )
    address_cleanup_interval: PositiveDuration = setting(
        dt.timedelta(days=1),
        env="ADDRESS_CLEANUP_INTERVAL_SECONDS",
        help="seconds between cleanup rounds of the address table (the timed releases)",
    )
    feed_retention_beyond_validity: Duration = setting(
        dt.timedelta(days=7),
        env="FEED_RETENTION_BEYOND_VALIDITY_SECONDS",
        help="seconds the event feed keeps an event beyond its delivery's validity period, "
        "counted from when it was written (asynchronous bounces come up to a week late); "
        "a finished delivery's feedback events go once its feed rows are gone, and "
        "feedback about it is refused from then on",
    )
    sending_log_retention_beyond_validity: Duration = setting(
        dt.timedelta(days=180),
        env="SENDING_LOG_RETENTION_BEYOND_VALIDITY_SECONDS",
        help="seconds a finished delivery keeps its sending logs and dropped recipients "
        "beyond its validity period (Adobe's delivery logs: six months), and never less "
        "than its feedback events; its KPIs stay, final",
    )
    feed_cleanup_interval: PositiveDuration = setting(
        dt.timedelta(hours=1),
        env="FEED_CLEANUP_INTERVAL_SECONDS",
        help="seconds between the retention rounds of the event feed, feedback events, "
        "sending logs and address histories",
    )
    alert_interval: PositiveDuration = setting(
        dt.timedelta(minutes=10),
        env="ALERT_INTERVAL_SECONDS",
        help="seconds between checks of the live deliveries against the alert criteria",
    )
    alert_min_messages: Annotated[int, Field(ge=1)] = setting(
        100, env="ALERT_MIN_MESSAGES", help="deliveries with fewer messages raise no alerts"
    )
    alert_hard_bounce_ratio: Ratio = setting(
        0.05, env="ALERT_HARD_BOUNCE_RATIO", help="hard bounces / sent above which to alert"
    )
    alert_soft_bounce_ratio: Ratio = setting(
        0.05, env="ALERT_SOFT_BOUNCE_RATIO", help="soft failures / sent above which to alert"
    )
    alert_complaint_ratio: Ratio = setting(
        0.001, env="ALERT_COMPLAINT_RATIO", help="complaints / delivered above which to alert"
    )
    alert_nothing_relayed: PositiveDuration = setting(
        dt.timedelta(minutes=15),
        env="ALERT_NOTHING_RELAYED_SECONDS",
        help="seconds after the send is confirmed with nothing relayed before an alert",
    )
    alert_min_messages_per_hour: Annotated[float, Field(ge=0)] = setting(
        1000.0,
        env="ALERT_MIN_MESSAGES_PER_HOUR",
        help="messages relayed per hour below which a delivery sending for 10 minutes alerts",
    )
    stop_hard_bounce_ratio: Ratio = setting(
        0.0,
        env="STOP_HARD_BOUNCE_RATIO",
        help="hard bounces / sent above which the rest of a delivery is stopped; 0: never",
    )
    tick: PositiveSeconds = setting(
        0.25, env="SCHEDULER_TICK_SECONDS", help="seconds between scheduler rounds"
    )
    pool_size: Annotated[int, Field(ge=1)] = setting(
        20, env="DB_POOL_SIZE", help="largest number of database connections"
    )
    metrics_port: Port = setting(0, env="METRICS_PORT", help="Prometheus metrics HTTP port; 0: off")
    health_port: Port = setting(
        0,
        env="DELIVERY_HEALTH_PORT",
        help="a plaintext port serving only the gRPC health service, for probes that speak "
        "no TLS (the kubelet's); 0: off",
    )
    grace: Seconds = setting(
        5.0, env="SHUTDOWN_GRACE_SECONDS", help="seconds calls in progress get on SIGTERM"
    )
    tls_cert: str = setting(
        "", env="DELIVERY_TLS_CERT", help="PEM certificate chain to serve TLS with; none: plaintext"
    )
    tls_key: str = setting("", env="DELIVERY_TLS_KEY", help="PEM private key of --tls-cert")
    tls_client_ca: str = setting(
        "",
        env="DELIVERY_TLS_CLIENT_CA",
        help="PEM CA bundle: require a client certificate it signed (mutual TLS); none: any client",
    )
    insecure: bool = setting(
        False,
        env="DELIVERY_INSECURE",
        help="allow plaintext beyond loopback (serving without --tls-cert, or to a --mta-address "
        "without --mta-ca); logs a warning",
    )
    max_concurrent_rpcs: Count = setting(
        2000,
        env="DELIVERY_MAX_CONCURRENT_RPCS",
        help="calls in progress at once, streams included; more: RESOURCE_EXHAUSTED",
    )
    reuse_port: bool = setting(
        False,
        env="DELIVERY_REUSE_PORT",
        help="share the gRPC port with the other processes of the service started with it "
        "(SO_REUSEPORT; the kernel spreads connections among them): one process per core "
        "on one database (docs/scaling.md)",
    )
    max_streams: Count = setting(
        1200,
        env="DELIVERY_MAX_STREAMS",
        help="streaming calls (WatchDeployment) open at once; more: RESOURCE_EXHAUSTED",
    )
    mta_ca: str = setting(
        "",
        env="MTA_CA",
        help="PEM CA bundle to check the MTA's certificate with (the link then uses TLS); "
        "none: plaintext",
    )
    mta_client_cert: str = setting(
        "",
        env="MTA_CLIENT_CERT",
        help="PEM certificate chain the link presents to the MTA (mutual TLS)",
    )
    mta_client_key: str = setting(
        "", env="MTA_CLIENT_KEY", help="PEM private key of --mta-client-cert"
    )

    @model_validator(mode="after")
    def _link(self) -> Self:
        """The link to the MTA: TLS files that go together, no plaintext beyond loopback."""
        name = self.name_of
        if bool(self.mta_client_cert) != bool(self.mta_client_key):
            raise ValueError(f"{name('mta_client_cert')} and {name('mta_client_key')} go together")
        if self.mta_client_cert and not self.mta_ca:
            raise ValueError(f"{name('mta_client_cert')} needs {name('mta_ca')}")
        if not self.mta_ca and not self.insecure and not target_is_loopback(self.mta_address):
            raise ValueError(
                f"{name('mta_address')} {self.mta_address!r} would be reached in plaintext: "
                f"give {name('mta_ca')} (and a client certificate), or {name('insecure')}"
            )
        return self

    def address_rules(self) -> quarantine.Rules:
        """What feedback does to addresses, as configured."""
        micros = dt.timedelta(microseconds=1)
        return quarantine.Rules(
            significant_interval=self.significant_error_interval // micros,
            threshold=self.quarantine_threshold,
            release_after=self.erroneous_release // micros,
            mailbox_full_release_after=self.mailbox_full_release // micros,
        )

    def alert_rules(self) -> alerts.AlertRules:
        return alerts.AlertRules(
            min_messages=self.alert_min_messages,
            hard_bounce_ratio=self.alert_hard_bounce_ratio,
            soft_bounce_ratio=self.alert_soft_bounce_ratio,
            complaint_ratio=self.alert_complaint_ratio,
            nothing_relayed_seconds=self.alert_nothing_relayed.total_seconds(),
            min_messages_per_hour=self.alert_min_messages_per_hour,
            stop_hard_bounce_ratio=self.stop_hard_bounce_ratio or None,
        )

    def mta_credentials(self) -> grpc.ChannelCredentials | None:
        """The link's TLS from --mta-ca and the client certificate; None for plaintext
        (then a warning if the MTA is beyond loopback, which only --insecure allows).

        Raises OSError if a file cannot be read.
        """
        if not self.mta_ca:
            if not target_is_loopback(self.mta_address):
                log.warning(
                    "the link to the MTA at %s is PLAINTEXT (--insecure): give --mta-ca and a "
                    "client certificate for mutual TLS",
                    self.mta_address,
                )
            return None
        # Imported here: reading the settings (--help) needs no gRPC.
        from grpc_common import serving

        return serving.channel_credentials(self.mta_ca, self.mta_client_cert, self.mta_client_key)
