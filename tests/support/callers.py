"""Callers as the tests need them: operators with roles, and channels whose every call
carries an operator's token unless the call brings its own (the service denies by
default: delivery_service/authorization.py)."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import grpc

from delivery_service import admin

# Every role but admin: what a test that is not about authorization calls with.
CALLER_ROLES: tuple[str, ...] = tuple(r for r in admin.ROLES if r != "admin")

Metadata = list[tuple[str, str]]


def bearer(token: str) -> Metadata:
    return [("authorization", f"Bearer {token}")]


class _UnaryAio(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, metadata: Metadata) -> None:
        self.metadata = metadata

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_metadata(details, self.metadata), request)


class _StreamAio(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    # One class per kind: an aio channel files an interceptor under its first kind only.
    def __init__(self, metadata: Metadata) -> None:
        self.metadata = metadata

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_metadata(details, self.metadata), request)


def _merged(details: Any, metadata: Metadata) -> Metadata | None:
    """The call's metadata with `metadata` added; None if the call brings its own
    authorization (then it goes as it is)."""
    given = list(details.metadata or ())
    if any(key == "authorization" for key, _ in given):
        return None
    return [*given, *metadata]


def _with_metadata(details: Any, metadata: Metadata) -> Any:
    merged = _merged(details, metadata)
    if merged is None:
        return details
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, merged, details.credentials, details.wait_for_ready
    )


def interceptors(metadata: Metadata) -> list[Any]:
    """The interceptors that add `metadata` to the calls of an aio channel (unary and
    server-streaming) that bring no authorization of their own."""
    return [_UnaryAio(metadata), _StreamAio(metadata)]


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """grpc's sync call details, with other metadata."""


class DefaultMetadata(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds `metadata` to each call of a channel that has no authorization of its own."""

    def __init__(self, metadata: Metadata) -> None:
        self.metadata = metadata

    def _details(self, details: Any) -> Any:
        merged = _merged(details, self.metadata)
        if merged is None:
            return details
        return _CallDetails(
            details.method, details.timeout, merged, details.credentials,
            details.wait_for_ready, details.compression,
        )  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def channel(address: str, metadata: Metadata) -> grpc.Channel:
    """A channel whose calls carry `metadata` unless they bring an authorization."""
    return grpc.intercept_channel(grpc.insecure_channel(address), DefaultMetadata(metadata))
