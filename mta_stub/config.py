"""The stub's settings: each a flag and an environment variable
(grpc_common.settings reads and checks them)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, field_validator

from grpc_common.settings import Count, Port, Seconds, ServerSettings, setting
from mta_stub.scenarios import MixExtras, ScenarioError


class Settings(ServerSettings):
    """How the stub runs; the defaults are those of a plain `python -m mta_stub`."""

    prog: ClassVar[str] = "python -m mta_stub"
    description: ClassVar[str] = "The Enhanced MTA stub, a gRPC server."

    host: str = setting("127.0.0.1", env="MTA_HOST", help="interface to listen on")
    port: Port = setting(50052, env="MTA_PORT", help="port to listen on; 0 picks a free one")
    retry_interval_ms: Annotated[int, Field(ge=1)] = setting(
        1000,
        env="MTA_RETRY_INTERVAL_MS",
        help="milliseconds between two attempts of a soft-bouncing message",
    )
    engagement_delay_ms: Annotated[int, Field(ge=0)] = setting(
        200,
        env="MTA_ENGAGEMENT_DELAY_MS",
        help="milliseconds between delivery and open, and open and click",
    )
    mix_extras: str = setting(
        "",
        env="MTA_MIX_EXTRAS",
        help="what every seeded mix SetScenario sets gets beyond the fields of mta.v1.Mix, "
        'which has none for them: a JSON object such as {"complaint_rate": 0.001, '
        '"late_hard_bounce_rate": 0.002, "late_hard_bounce_max_ms": 300} (fractions of the '
        "delivered messages; the longest delay from delivery to late bounce, default 300); "
        "none: no complaints or late bounces in mixes",
    )
    spool: str = setting(
        "",
        env="MTA_SPOOL",
        help="SQLite file keeping what the stub acknowledged (messages, schedule, "
        "unacknowledged events, outcomes, scenario) across restarts and kill -9; created "
        "if missing; none: in memory",
    )
    retention_seconds: Seconds = setting(
        604800.0,
        env="MTA_RETENTION_SECONDS",
        help="seconds a message's id (for deduplication) and address are kept after its "
        "expiry, once its timeline is over; then forgotten, and a relay of it accepted as "
        "new. A week: asynchronous bounces come up to a week after the send, and the "
        "delivery service never relays a message again after its delivery's validity",
    )
    metrics_port: Port = setting(
        0, env="MTA_METRICS_PORT", help="Prometheus metrics HTTP port; 0: off"
    )
    health_port: Port = setting(
        0,
        env="MTA_HEALTH_PORT",
        help="a plaintext port serving only the gRPC health service, for probes that speak "
        "no TLS (the kubelet's); 0: off",
    )
    grace: Seconds = setting(
        5.0, env="MTA_GRACE_SECONDS", help="seconds calls in progress get to finish on shutdown"
    )
    tls_cert: str = setting(
        "", env="MTA_TLS_CERT", help="PEM certificate chain to serve TLS with; none: plaintext"
    )
    tls_key: str = setting("", env="MTA_TLS_KEY", help="PEM private key of --tls-cert")
    tls_client_ca: str = setting(
        "",
        env="MTA_TLS_CLIENT_CA",
        help="PEM CA bundle: take only clients with a certificate it signed (mutual TLS, "
        "as the link to the delivery service should be); none: any client",
    )
    insecure: bool = setting(
        False, env="MTA_INSECURE", help="allow plaintext beyond loopback; logs a warning"
    )
    max_concurrent_rpcs: Count = setting(
        200,
        env="MTA_MAX_CONCURRENT_RPCS",
        help="calls in progress at once, streams included; more: RESOURCE_EXHAUSTED",
    )
    max_streams: Count = setting(
        32,
        env="MTA_MAX_STREAMS",
        help="Exchange streams open at once (one per delivery service process); more: "
        "RESOURCE_EXHAUSTED",
    )
    test_controls: bool = setting(
        False,
        env="MTA_TEST_CONTROLS",
        help="serve the test controls SetScenario, ClearScenario and GetOutcomes (for tests, "
        "load tests and demos); off: they answer UNIMPLEMENTED",
    )

    @field_validator("mix_extras")
    @classmethod
    def _mix_extras(cls, value: str) -> str:
        try:
            MixExtras.from_json(value)
        except ScenarioError as exc:
            raise ValueError(str(exc)) from None
        return value
