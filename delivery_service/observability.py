"""The delivery service's own metrics, beside the shared RPC ones (grpc_common.observability).

The request id, the log line per RPC and the grpc_server_* metrics come from the
interceptor that both servers share; this module adds what only this service counts.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from grpc_common.observability import ObservabilityInterceptor

MESSAGES_RELAYED = Counter("delivery_messages_relayed_total", "Messages the MTA acknowledged.")
FEEDBACK_APPLIED = Counter("delivery_feedback_events_applied_total", "Feedback events applied.")
FEEDBACK_DEDUPLICATED = Counter(
    "delivery_feedback_events_deduplicated_total", "Feedback events seen before, skipped."
)
FEEDBACK_UNKNOWN = Counter(
    "delivery_feedback_events_unknown_total", "Feedback events about unknown messages."
)
FEEDBACK_REJECTED = Counter(
    "delivery_feedback_events_rejected_total",
    "Feedback events dropped as malformed or refused by the database (each logged).",
)
FEEDBACK_FAILED_BATCHES = Counter(
    "delivery_feedback_batches_failed_total",
    "Feedback batches an unexpected error kept from being applied (logged with its "
    "traceback; the MTA sends them again after the reconnect).",
)
FEEDBACK_REFUSED = Counter(
    "delivery_feedback_events_refused_total",
    "Feedback events not believed because they do not fit the relay record, by reason "
    "(delivery_state, past_retention, not_relayed, event_time, link_index, not_delivered, "
    "events_per_batch).",
    ["reason"],
)
STREAM_RECONNECTS = Counter("delivery_mta_stream_reconnects_total", "Reconnects to the MTA.")
BATCH_SIZE = Histogram(
    "delivery_batch_size",
    "Items per batch, by direction.",
    ["direction"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
FEED_WATCHERS = Gauge(
    "delivery_feed_watchers", "WatchDeliveryEvents streams open (the event feed's consumers)."
)
FEED_EVENTS_SERVED = Counter(
    "delivery_feed_events_served_total", "Events the feed served, by RPC.", ["rpc"]
)
FEED_LAG = Histogram(
    "delivery_feed_lag_seconds",
    "From an event's write (in the transaction that committed it) to its serving by a "
    "watch stream: once per response, for its oldest event.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
DB_DISK_FULL_ERRORS = Counter(
    "delivery_db_disk_full_errors_total",
    "Database writes refused for lack of space (SQLSTATE 53100, disk_full), by flow "
    "(ingest, relay, scheduler): each rolled back whole and tried again later.",
    ["flow"],
)
DB_DISK_FULL = Gauge(
    "delivery_db_disk_full",
    "1 while the feedback's writes fail for lack of space in the database (the named "
    "health services are NOT_SERVING meanwhile), 0 once one commits.",
)
POOL_CONNECTIONS = Gauge(
    "delivery_db_pool_connections", "Database pool connections, by use.", ["state"]
)


def interceptor() -> ObservabilityInterceptor:
    """The shared interceptor; its RPC lines are logged as `delivery_service.rpc`."""
    return ObservabilityInterceptor("delivery_service.rpc")
