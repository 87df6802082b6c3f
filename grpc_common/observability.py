"""What users of a gRPC server expect of both of ours: a request id, one log line per RPC,
the usual RPC metrics, and a Prometheus endpoint.

The interceptor wraps all four handler kinds. Metric names follow the usual
grpc_server_* conventions so existing dashboards work. Each server adds its own
metrics beside these (delivery_service.observability, mta_stub.observability).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import prometheus_client
from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

# The metadata key that carries the request id in, and the trailer that carries it out.
REQUEST_ID_KEY = "x-request-id"

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
    """Request id, one log line per RPC (method, code, duration), and RPC metrics.

    `logger` names the logger of the RPC lines, say `delivery_service.rpc`.
    """

    def __init__(self, logger: str) -> None:
        self._log = logging.getLogger(logger)

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
        rid = str(incoming.get(REQUEST_ID_KEY) or uuid.uuid4().hex[:16])
        rpc_log = self._log

        def begin(context: Any) -> float:
            request_id.set(rid)
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            RPC_STARTED.labels(kind, service, name).inc()
            return time.perf_counter()

        def end(context: Any, started: float, error: BaseException | None) -> None:
            elapsed = time.perf_counter() - started
            code = _code(context, error)
            RPC_HANDLED.labels(kind, service, name, code.name).inc()
            RPC_SECONDS.labels(kind, service, name).observe(elapsed)
            level = logging.ERROR if code is grpc.StatusCode.UNKNOWN else logging.INFO
            rpc_log.log(
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
                    if hasattr(responses, "aclose"):
                        # Closed here, not whenever the garbage collector gets to it: the
                        # servicer's own clean-up runs before this RPC counts as ended.
                        async with contextlib.aclosing(responses):
                            async for response in responses:
                                yield response
                    elif hasattr(responses, "__aiter__"):
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id and, on RPC lines, method, code, duration."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        for key in ("method", "code", "duration_ms"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def setup_logging(level: str, as_json: bool) -> None:
    """Log lines on stderr, as text or JSON, each with the request id of its RPC."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def serve_metrics(port: int, host: str) -> None:
    """Serves the Prometheus metrics at http://host:port/metrics, from a thread.

    Raises OSError if the port cannot be bound.
    """
    try:
        prometheus_client.start_http_server(port, host)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    log.info("metrics on http://%s:%d/metrics", host, port)
