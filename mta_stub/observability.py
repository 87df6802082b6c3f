"""The stub's own metrics, beside the shared RPC ones (grpc_common.observability).

What an operator watches on an MTA: messages coming in (new or already held),
feedback going out and coming back acknowledged, the streams open, the relay
batches refused when the spool cannot store them (a full disk), and the messages
forgotten by retention.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from grpc_common.observability import ObservabilityInterceptor

MESSAGES_RELAYED = Counter(
    "mta_stub_relayed_messages_total",
    "Messages relayed in and acknowledged, by result: accepted (new) or duplicate (held before).",
    ["result"],
)
# Looked up once, and shown at 0 before the first message.
MESSAGES_ACCEPTED = MESSAGES_RELAYED.labels("accepted")
MESSAGES_DUPLICATE = MESSAGES_RELAYED.labels("duplicate")
FEEDBACK_EVENTS_SENT = Counter(
    "mta_stub_feedback_events_sent_total",
    "Feedback events written to streams, resends after a reconnect included.",
)
FEEDBACK_BATCHES_SENT = Counter(
    "mta_stub_feedback_batches_sent_total", "Feedback batches written to streams."
)
FEEDBACK_ACKS = Counter(
    "mta_stub_feedback_acks_received_total", "Feedback batches the delivery service acknowledged."
)
OPEN_STREAMS = Gauge("mta_stub_open_streams", "Exchange streams open now.")
RELAY_BATCHES_REFUSED = Counter(
    "mta_stub_relay_batches_refused_total",
    "Relay batches refused unacknowledged (the stream ended with RESOURCE_EXHAUSTED), by"
    " reason: spool_full (the spool could not store them).",
    ["reason"],
)
REFUSED_SPOOL_FULL = RELAY_BATCHES_REFUSED.labels("spool_full")
SPOOL_FULL_ERRORS = Counter(
    "mta_stub_spool_full_errors_total",
    "Spool writes that failed for lack of space (SQLITE_FULL) and were rolled back, by"
    " operation: relay batch, acknowledgement, scheduled steps, scenario, client, outbox row"
    " cut, retention.",
    ["operation"],
)
MESSAGES_FORGOTTEN = Counter(
    "mta_stub_messages_forgotten_total",
    "Held messages forgotten by retention (--retention-seconds after their expiry, their"
    " timeline over): relayed again, they would be accepted as new.",
)
SPOOL_FULL = Gauge(
    "mta_stub_spool_full",
    "1 while the spool's last write failed for lack of space, 0 once a write commits again.",
)


def interceptor() -> ObservabilityInterceptor:
    """The shared interceptor; its RPC lines are logged as `mta_stub.rpc`."""
    return ObservabilityInterceptor("mta_stub.rpc")
