"""The stub's own metrics, beside the shared RPC ones (grpc_common.observability).

What an operator watches on an MTA: messages coming in (new or already held),
feedback going out and coming back acknowledged, and the streams open.
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


def interceptor() -> ObservabilityInterceptor:
    """The shared interceptor; its RPC lines are logged as `mta_stub.rpc`."""
    return ObservabilityInterceptor("mta_stub.rpc")
