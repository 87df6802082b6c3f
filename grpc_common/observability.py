"""What users of a gRPC server expect of both of ours: a request id, one log line per RPC,
the usual RPC metrics, and a Prometheus endpoint.

The interceptor wraps all four handler kinds, and is the first thing each call meets: it
also refuses what no servicer should see, before any servicer code runs: a request that
does not decode (a string field that is not UTF-8, say) is INVALID_ARGUMENT, and a stream
beyond the server's cap is RESOURCE_EXHAUSTED. Metric names follow the usual
grpc_server_* conventions so existing dashboards work. Each server adds its own
metrics beside these (delivery_service.observability, mta_stub.observability).

The request id is the caller's `x-request-id` when it is 1 to 128 characters of
`[A-Za-z0-9._:-]`, else a generated one: nothing a caller sends can break a log line.
It comes back in the trailing metadata of every call, failed ones included.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import functools
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import grpc
import prometheus_client
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

# The metadata key that carries the request id in, and the trailer that carries it out.
REQUEST_ID_KEY = "x-request-id"
# A caller's request id is kept only if it is this: short, and nothing a log line could
# be broken or forged with.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

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
# As go-grpc-prometheus counts them: each message of a stream, and a unary call's request
# and (when it succeeds) its response. Looked up once per call, one inc() per message.
MSG_RECEIVED = Counter(
    "grpc_server_msg_received_total",
    "RPC stream messages received on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
MSG_SENT = Counter(
    "grpc_server_msg_sent_total",
    "RPC stream messages sent by the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
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


@functools.lru_cache(maxsize=1024)
def _message_counters(kind: str, service: str, name: str) -> tuple[Any, Any]:
    """A method's received and sent counters, looked up once (a lookup costs 2 us)."""
    return MSG_RECEIVED.labels(kind, service, name), MSG_SENT.labels(kind, service, name)


def _names(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        # A stream whose peer died may see its requests simply end: the call is
        # cancelled all the same.
        return grpc.StatusCode.CANCELLED if context.cancelled() else grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        # The peer went away (it cancelled, or its connection died) or the server stops.
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


# The most of a status message an RPC's log line carries.
MAX_LOGGED_DETAILS = 300


def _details(context: Any, code: grpc.StatusCode, error: BaseException | None) -> str:
    """What the RPC's log line says of a failed call: its status message (or, for a bug,
    the exception), cut short and with control characters escaped, since the caller's
    input may be quoted in it."""
    if code is grpc.StatusCode.OK:
        return ""
    given = context.details()
    if isinstance(given, bytes):
        given = given.decode("utf-8", "replace")
    if not given and code is grpc.StatusCode.UNKNOWN and error is not None:
        given = f"{type(error).__name__}: {error}"
    text = str(given or "")
    if len(text) > MAX_LOGGED_DETAILS:
        text = text[: MAX_LOGGED_DETAILS - 1] + "\u2026"
    return _UNPRINTABLE.sub(_escaped, text)


def request_id_of(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's x-request-id if it is a good one, else a new id."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            if REQUEST_ID_PATTERN.fullmatch(value):
                return value
            break
    return uuid.uuid4().hex[:16]


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Request id, one log line per RPC (method, code, duration), RPC metrics, and the
    refusals before any servicer code: an undecodable request, a stream over the cap.

    `logger` names the logger of the RPC lines, say `delivery_service.rpc`.
    """

    def __init__(self, logger: str) -> None:
        self._log = logging.getLogger(logger)
        self._max_streams: int | None = None
        self._streams = 0

    def cap_streams(self, limit: int) -> None:
        """Refuses a streaming call with RESOURCE_EXHAUSTED while `limit` are open."""
        self._max_streams = limit

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
        rid = request_id_of(handler_call_details.invocation_metadata)
        tag = (REQUEST_ID_KEY, rid)
        rpc_log = self._log
        deserializer = _tolerant(handler.request_deserializer)
        received, sent = _message_counters(kind, service, name)

        def begin(context: Any) -> float:
            request_id.set(rid)
            context.set_trailing_metadata((tag,))
            RPC_STARTED.labels(kind, service, name).inc()
            return time.perf_counter()

        def end(context: Any, started: float, error: BaseException | None) -> None:
            elapsed = time.perf_counter() - started
            code = _code(context, error)
            RPC_HANDLED.labels(kind, service, name, code.name).inc()
            RPC_SECONDS.labels(kind, service, name).observe(elapsed)
            level = logging.ERROR if code is grpc.StatusCode.UNKNOWN else logging.INFO
            details = _details(context, code, error)
            rpc_log.log(
                level,
                "rpc %s %s %.1fms" + (": %s" if details else ""),
                method,
                code.name,
                elapsed * 1000,
                *((details,) if details else ()),
                extra={
                    "method": method,
                    "code": code.name,
                    "duration_ms": elapsed * 1000,
                    **({"details": details} if details else {}),
                },
            )

        async def admit(request: Any, context: _KeepsRequestId) -> Any:
            """The request as the servicer gets it, once the call may go on."""
            if handler.request_streaming:
                return _decoded(request, context, received)
            received.inc()
            if isinstance(request, Undecodable):
                await request.refuse(context)
            return request

        if handler.response_streaming:
            inner_stream = handler.unary_stream or handler.stream_stream

            async def streaming(request: Any, raw_context: Any) -> AsyncIterator[Any]:
                started = begin(raw_context)
                context = _KeepsRequestId(raw_context, tag, sent)
                error: BaseException | None = None
                try:
                    async with self._stream_slot(context):
                        responses = inner_stream(await admit(request, context), context)
                        if hasattr(responses, "aclose"):
                            # Closed here, not whenever the garbage collector gets to it: the
                            # servicer's own clean-up runs before this RPC counts as ended.
                            async with contextlib.aclosing(responses):
                                async for response in responses:
                                    sent.inc()
                                    yield response
                        elif hasattr(responses, "__aiter__"):
                            async for response in responses:
                                sent.inc()
                                yield response
                        else:  # a servicer that writes with context.write(), like health's Watch
                            await responses
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    end(raw_context, started, error)

            factory = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream
                else grpc.stream_stream_rpc_method_handler
            )
            return factory(
                streaming,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )

        inner = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, raw_context: Any) -> Any:
            started = begin(raw_context)
            context = _KeepsRequestId(raw_context, tag, sent)
            error: BaseException | None = None
            try:
                if not handler.request_streaming:
                    response = await inner(await admit(request, context), context)
                else:
                    async with self._stream_slot(context):
                        response = await inner(await admit(request, context), context)
                sent.inc()
                return response
            except BaseException as exc:
                error = exc
                raise
            finally:
                end(raw_context, started, error)

        factory = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return factory(
            unary,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )

    @contextlib.asynccontextmanager
    async def _stream_slot(self, context: _KeepsRequestId) -> AsyncIterator[None]:
        """One of the open streams the cap allows, or RESOURCE_EXHAUSTED."""
        limit = self._max_streams
        if limit is not None and self._streams >= limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this server has {limit} streams open, its most: try again later",
            )
        self._streams += 1
        try:
            yield
        finally:
            self._streams -= 1


class _KeepsRequestId:
    """The servicer's context, with the request id kept in the trailing metadata whatever
    the servicer puts there: an abort with rich details (grpc_status) replaces it. What
    the servicer writes with write() is counted as sent."""

    __slots__ = ("_context", "_sent", "_tag")

    def __init__(self, context: Any, tag: tuple[str, str], sent: Any) -> None:
        self._context = context
        self._tag = tag
        self._sent = sent

    async def write(self, message: Any) -> None:
        # Counted as handed to gRPC, as a streamed response is: a call cancelled as its
        # write completes (a client that read the answer and left) still sent it.
        self._sent.inc()
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def _with_tag(self, metadata: Sequence[tuple[str, str | bytes]]) -> tuple[Any, ...]:
        kept = tuple(m for m in metadata if m[0] != REQUEST_ID_KEY)
        return (*kept, self._tag)

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._context.set_trailing_metadata(self._with_tag(metadata))

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        given = tuple(trailing_metadata) or tuple(self._context.trailing_metadata())
        await self._context.abort(code, details, self._with_tag(given))

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, tuple(status.trailing_metadata))


class Undecodable:
    """A request that did not decode, in place of the message: refused with
    INVALID_ARGUMENT before the servicer sees it."""

    __slots__ = ("field", "reason")

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason

    @property
    def message(self) -> str:
        return f"{self.field}: {self.reason}"

    def mark(self, context: Any) -> None:
        """Sets the call's status for a servicer that ends when its requests end."""
        context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
        context.set_details(self.message)

    async def refuse(self, context: Any) -> None:
        """Ends the call with INVALID_ARGUMENT and a BadRequest detail naming the field."""
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=self.field, description=self.reason
        )
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=self.message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        await context.abort_with_status(rpc_status.to_status(status))


async def _decoded(requests: AsyncIterator[Any], context: Any, received: Any) -> AsyncIterator[Any]:
    """A request stream up to its first undecodable message: there the stream ends, as if
    the client were done sending, and the call's status is INVALID_ARGUMENT. Each message
    is counted as received."""
    async for request in requests:
        received.inc()
        if isinstance(request, Undecodable):
            request.mark(context)
            return
        yield request


@functools.lru_cache(maxsize=1024)
def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The deserializer, with a failure made an Undecodable instead of grpc's UNKNOWN
    (made once per method: the generated handlers keep their deserializer)."""
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)
    found = getattr(message_type, "DESCRIPTOR", None)
    descriptor = found if isinstance(found, Descriptor) else None
    type_name = descriptor.full_name if descriptor is not None else "message"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            bad = _bad_utf8(d, data) if (d := descriptor) is not None else None
            if bad is not None:
                return Undecodable(bad, "must be valid UTF-8")
            return Undecodable("request", f"is not a well-formed {type_name}")

    return deserialize


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _bad_utf8(descriptor: Descriptor, data: bytes, prefix: str = "") -> str | None:
    """The path of the first string field in `data`, a serialized `descriptor` message,
    that is not UTF-8 (`content.links[2]`); None if there is none or `data` is malformed."""
    seen: dict[int, int] = {}
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type != 2:  # a number: skip it (a group, unused in proto3: give up)
                if wire_type == 0:
                    pos = _varint(data, pos)[1]
                elif wire_type in (1, 5):
                    pos += 8 if wire_type == 1 else 4
                else:
                    return None
                continue
            size, pos = _varint(data, pos)
            chunk, pos = data[pos : pos + size], pos + size
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            index = seen.get(number, 0)
            seen[number] = index + 1
            path = prefix + field.name + (f"[{index}]" if field.is_repeated else "")
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return path
            elif field.message_type is not None:
                found = _bad_utf8(field.message_type, chunk, path + ".")
                if found is not None:
                    return found
    except IndexError:
        return None
    return None


class RequestIdFilter(logging.Filter):
    """Puts the request id of the current RPC on every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def rfc3339(created: float) -> str:
    """A record's time as RFC 3339 in UTC, to the millisecond: 2026-12-01T13:57:59.652Z."""
    moment = dt.datetime.fromtimestamp(created, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Rfc3339Formatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339(record.created)


class JsonFormatter(_Rfc3339Formatter):
    """One JSON object per line, with the request id and, on RPC lines, method, code,
    duration and, for a failed call, the status message (details)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        for key in ("method", "code", "duration_ms", "details"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# What would end or hide a text log line: C0 and C1 controls, DEL, line and paragraph
# separators, and the bidi controls.
_UNPRINTABLE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


class TextFormatter(_Rfc3339Formatter):
    """TEXT_FORMAT, one line per record whatever its message holds: a control character
    in it is written escaped (a traceback still follows on lines of its own)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if _UNPRINTABLE.search(record.message):
            record.message = _UNPRINTABLE.sub(_escaped, record.message)
        return super().formatMessage(record)


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def setup_logging(level: str, as_json: bool) -> None:
    """Log lines on stderr, as text or JSON, each with the request id of its RPC.

    Everything Python would write to stderr on its own goes through them too: the
    libraries' loggers (grpc's, psycopg's) propagate to this one handler, warnings are
    logged, and so is an exception nothing caught, in the main thread or another.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    log.critical("uncaught %s", kind.__name__, exc_info=(kind, error, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        name = args.thread.name if args.thread else "?"
        log.critical(
            "uncaught %s in thread %s",
            args.exc_type.__name__,
            name,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )


def stdout_line(message: str, as_json: bool, logger: str) -> str:
    """A line for stdout (`listening on host:port`): as it is, or in JSON mode a JSON log
    line like those on stderr, with the message in its "message" field."""
    if not as_json:
        return message
    record = logging.LogRecord(logger, logging.INFO, __file__, 0, message, None, None)
    RequestIdFilter().filter(record)
    return JsonFormatter().format(record)


def serve_metrics(port: int, host: str) -> None:
    """Serves the Prometheus metrics at http://host:port/metrics, from a thread.

    Raises OSError if the port cannot be bound.
    """
    try:
        prometheus_client.start_http_server(port, host)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    log.info("metrics on http://%s:%d/metrics", host, port)
