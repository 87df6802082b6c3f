"""The service's exceptions as gRPC statuses: a known error gets its code and a message
saying what is wrong (bad fields also a BadRequest detail listing each of them); anything
else is a bug."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from delivery_service import auth
from delivery_service.store.connection import (
    AlreadyExists,
    Conflict,
    NotFound,
    OutOfRange,
    Unavailable,
)
from delivery_service.validation import Invalid

Request = TypeVar("Request")
Response = TypeVar("Response")
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (auth.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (auth.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def _status(code: grpc.StatusCode, message: str, detail: Any = None) -> grpc.Status:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


def status_of(exc: Exception) -> grpc.Status | None:
    """The status a known error becomes; None for a bug."""
    if isinstance(exc, Invalid):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in exc.violations
        ]
        return _status(
            grpc.StatusCode.INVALID_ARGUMENT,
            str(exc),
            error_details_pb2.BadRequest(field_violations=violations),
        )
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return _status(code, str(exc))
    return None


async def _abort(context: Context, exc: Exception) -> None:
    status = status_of(exc)
    if status is None:
        raise exc
    await context.abort_with_status(status)


def unary(
    method: Callable[[Any, Request, Context], Awaitable[Response]],
) -> Callable[[Any, Request, Context], Awaitable[Response]]:
    """Turns the service's errors into gRPC statuses (unary methods)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Request, context: Context) -> Response:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc

    return wrapper


def streaming(
    method: Callable[[Any, Request, Context], AsyncIterator[Response]],
) -> Callable[[Any, Request, Context], AsyncIterator[Response]]:
    """Turns the service's errors into gRPC statuses (server-streaming methods)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Request, context: Context) -> AsyncIterator[Response]:
        try:
            async for response in method(self, request, context):
                yield response
        except Exception as exc:
            await _abort(context, exc)

    return wrapper
