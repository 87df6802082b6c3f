"""Who may call what: one table for every RPC of both services, deny by default.

The delivery service enforces its part here, in an interceptor that runs before any
servicer: an RPC with no entry is refused (PERMISSION_DENIED), an RPC that needs a role
is refused without a token (UNAUTHENTICATED) or without the role (PERMISSION_DENIED).
Health and reflection are open. The MTA stub's entries name what its own transport
checks (tests/security checks that both tables cover every RPC of the descriptors).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from delivery_service import audit, auth
from delivery_service.domain.roles import Role
from delivery_service.store.connection import Database, Unavailable
from delivery_service.store.records import Operator

# An entry that needs no token.
OPEN = "open"

_D = "/delivery.v1.DeliveryService/"
_A = "/delivery.v1.AdminService/"
_AD = "/delivery.v1.AddressService/"
# The delivery service's process serves DeliveryService, AdminService and AddressService.
DELIVERY_SERVICE: dict[str, Role | str] = {
    _D + "CreateDelivery": Role.CREATE_DELIVERIES,
    _D + "AddRecipients": Role.CREATE_DELIVERIES,
    _D + "PrepareDelivery": Role.CREATE_DELIVERIES,
    _D + "ApproveDelivery": Role.APPROVE_DELIVERIES,
    _D + "ConfirmSend": Role.START_DELIVERIES,
    _D + "StopDelivery": Role.START_DELIVERIES,
    _D + "GetDelivery": Role.READ_DELIVERIES,
    _D + "ListDeliveries": Role.READ_DELIVERIES,
    _D + "WatchDeployment": Role.READ_DELIVERIES,
    _D + "GetKpis": Role.READ_DELIVERIES,
    _D + "ComputeStats": Role.COMPUTE_STATS,
    _D + "ListSendingLogs": Role.READ_DELIVERIES,
    _D + "ListAlerts": Role.READ_DELIVERIES,
    _D + "ListDeliveryEvents": Role.READ_DELIVERIES,
    _D + "WatchDeliveryEvents": Role.READ_DELIVERIES,
    _D + "GetMessageTimeline": Role.READ_DELIVERIES,
    _D + "GetProfileHistory": Role.MANAGE_PROFILES,
    _D + "UpsertProfiles": Role.MANAGE_PROFILES,
    # A recurring delivery that sends unattended also needs start_deliveries (the
    # servicer asks for it): creating it confirms every occurrence in advance.
    _D + "CreateRecurringDelivery": Role.CREATE_DELIVERIES,
    _D + "GetRecurringDelivery": Role.READ_DELIVERIES,
    _D + "PauseRecurringDelivery": Role.START_DELIVERIES,
    _D + "ResumeRecurringDelivery": Role.START_DELIVERIES,
    _D + "CancelRecurringDelivery": Role.START_DELIVERIES,
    _A + "CreateOperator": Role.ADMIN,
    _A + "ListOperators": Role.ADMIN,
    _A + "RevokeOperator": Role.ADMIN,
    _A + "RotateOperatorToken": Role.ADMIN,
    _A + "ListAuditEvents": Role.ADMIN,
    # Address entries reveal addresses, as the deliveries' reads do; changing them
    # changes who is targeted, as profile writes do.
    _AD + "ListAddresses": Role.READ_DELIVERIES,
    _AD + "GetAddress": Role.READ_DELIVERIES,
    _AD + "SetAddressStatus": Role.MANAGE_PROFILES,
    _AD + "ReleaseAddresses": Role.MANAGE_PROFILES,
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
    "/grpc.health.v1.Health/List": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": OPEN,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": OPEN,
}

# The stub has no operators: its stream is for the delivery service (mutual TLS when
# TLS is on), its test controls only for a stub started with them.
MTA_PEER = "mta_peer: the client certificate, when TLS is on"
TEST_CONTROLS = "test_controls: served only by a stub started with them on"
MTA_STUB: dict[str, str] = {
    "/mta.v1.MtaService/Exchange": MTA_PEER,
    "/mta.v1.MtaService/SetScenario": TEST_CONTROLS,
    "/mta.v1.MtaService/GetOutcomes": TEST_CONTROLS,
    "/mta.v1.MtaService/ClearScenario": TEST_CONTROLS,
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
    "/grpc.health.v1.Health/List": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": OPEN,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": OPEN,
}

# The operator the current RPC runs for, set before the servicer runs.
current_operator: contextvars.ContextVar[Operator] = contextvars.ContextVar("current_operator")


def _refusal(
    handler: Any,
    code: grpc.StatusCode,
    message: str,
    record: Callable[[Any, Any], Awaitable[None]] | None = None,
) -> Any:
    """A handler of the same kind as `handler` that answers only `code` (after
    `record(request, context)`, for an audited call)."""

    async def refuse(request: Any, context: Any) -> Any:
        if record is not None:
            await record(request, context)
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: Any) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - a generator, for the streaming kinds

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    streaming = handler.response_streaming
    return kinds[(handler.request_streaming, streaming)](
        refuse_stream if streaming else refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks the caller against the table before the servicer runs."""

    def __init__(self, db: Database, table: dict[str, Role | str]) -> None:
        self.db = db
        self.table = table

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        rule = self.table.get(details.method)
        if rule == OPEN:
            return handler
        if not isinstance(rule, Role):
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{details.method} is in no authorization rule: refused",
            )
        method: str = details.method
        token = auth.bearer_token(details.invocation_metadata)
        try:
            operator = await auth.require(self.db, token, rule)
        except (auth.Unauthenticated, auth.PermissionDenied, Unavailable) as exc:
            code = _REFUSALS[type(exc)]
            return _refusal(handler, code, str(exc), self._recorder(method, exc, code))
        current_operator.set(operator)
        if method in audit.AUDITED:
            return audit.audited(self.db, method, operator.name, handler)
        return handler

    def _recorder(
        self, method: str, refusal: Exception, code: grpc.StatusCode
    ) -> Callable[[Any, Any], Awaitable[None]] | None:
        """Writes a refused attempt at a state change to the audit trail."""
        if method not in audit.AUDITED:
            return None
        who = getattr(refusal, "operator", "")

        async def record(request: Any, context: Any) -> None:
            await audit.write(
                self.db, method, who, audit.target_of(request, None), code.name, context
            )

        return record


_REFUSALS: dict[type[Exception], grpc.StatusCode] = {
    auth.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    auth.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}
