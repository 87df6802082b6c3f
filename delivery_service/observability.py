"""Cross-cutting parts of the server: one log line per RPC with a request id, and metrics.

The interceptors wrap all four handler kinds. Metric names follow the usual
grpc_server_* conventions so existing dashboards work.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("delivery_service.rpc")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

RPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC, to its status.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MESSAGES_RELAYED = Counter("delivery_messages_relayed_total", "Messages the MTA acknowledged.")
FEEDBACK_APPLIED = Counter("delivery_feedback_events_applied_total", "Feedback events applied.")
FEEDBACK_DEDUPLICATED = Counter(
    "delivery_feedback_events_deduplicated_total", "Feedback events seen before, skipped."
)
FEEDBACK_UNKNOWN = Counter(
    "delivery_feedback_events_unknown_total", "Feedback events about unknown messages."
)
STREAM_RECONNECTS = Counter("delivery_mta_stream_reconnects_total", "Reconnects to the MTA.")
BATCH_SIZE = Histogram(
    "delivery_batch_size",
    "Items per batch, by direction.",
    ["direction"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
POOL_CONNECTIONS = Gauge(
    "delivery_db_pool_connections", "Database pool connections, by use.", ["state"]
)

_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


def _names(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    return grpc.StatusCode.UNKNOWN


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Request id, one log line per RPC (method, code, duration), and RPC metrics."""

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        service, name = _names(method)
        kind = _TYPES[(handler.request_streaming, handler.response_streaming)]
        incoming = dict(handler_call_details.invocation_metadata or ())
        rid = str(incoming.get("x-request-id") or uuid.uuid4().hex[:16])

        def begin(context: Any) -> float:
            request_id.set(rid)
            context.set_trailing_metadata((("x-request-id", rid),))
            RPC_STARTED.labels(kind, service, name).inc()
            return time.perf_counter()

        def end(context: Any, started: float, error: BaseException | None) -> None:
            elapsed = time.perf_counter() - started
            code = _code(context, error)
            RPC_HANDLED.labels(kind, service, name, code.name).inc()
            RPC_SECONDS.labels(kind, service, name).observe(elapsed)
            level = logging.ERROR if code is grpc.StatusCode.UNKNOWN else logging.INFO
            log.log(
                level,
                "rpc %s %s %.1fms",
                method,
                code.name,
                elapsed * 1000,
                extra={"method": method, "code": code.name, "duration_ms": elapsed * 1000},
            )

        if handler.response_streaming:
            inner_stream = handler.unary_stream or handler.stream_stream

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                started = begin(context)
                error: BaseException | None = None
                try:
                    responses = inner_stream(request, context)
                    if hasattr(responses, "__aiter__"):
                        async for response in responses:
                            yield response
                    else:  # a servicer that writes with context.write(), like health's Watch
                        await responses
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    end(context, started, error)

            factory = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream
                else grpc.stream_stream_rpc_method_handler
            )
            return factory(
                streaming,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        inner = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: Any) -> Any:
            started = begin(context)
            error: BaseException | None = None
            try:
                return await inner(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                end(context, started, error)

        factory = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return factory(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class RequestIdFilter(logging.Filter):
    """Puts the request id of the current RPC on every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True
