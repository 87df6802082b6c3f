"""The audit trail of every state-changing call: who, what, when, its request id, the
peer, and how it ended (OK, or why it was refused). Written by the authorization
interceptor around the servicer, after the call ends; never updated."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from delivery_service import clock
from delivery_service.store.connection import Database
from delivery_service.store.records import AuditEvent
from delivery_service.usecases import operators
from grpc_common.observability import request_id

log = logging.getLogger(__name__)

_D = "/delivery.v1.DeliveryService/"
_A = "/delivery.v1.AdminService/"
_AD = "/delivery.v1.AddressService/"
# Dry runs of ReleaseAddresses too: the target says so ("; dry run").
AUDITED = frozenset(
    {
        *(
            _D + name
            for name in (
                "CreateDelivery",
                "AddRecipients",
                "PrepareDelivery",
                "ApproveDelivery",
                "ConfirmSend",
                "StopDelivery",
                "ComputeStats",
                "UpsertProfiles",
                "CreateRecurringDelivery",
                "PauseRecurringDelivery",
                "ResumeRecurringDelivery",
                "CancelRecurringDelivery",
            )
        ),
        *(_A + name for name in ("CreateOperator", "RevokeOperator", "RotateOperatorToken")),
        *(_AD + name for name in ("SetAddressStatus", "ReleaseAddresses")),
    }
)
# The longest text of a request that a target repeats (an address's longest).
MAX_SHOWN = 254


def _shown(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"


def _time(value: Any) -> str:
    try:
        return str(value.ToJsonString())
    except ValueError:  # out of Timestamp's range: refused, but still recorded
        return f"{value.seconds}s"


def _enum(message: Any, field: str, number: int) -> str:
    """An enum field's value by its short name: `ADDRESS_STATUS_DENYLISTED` → `DENYLISTED`."""
    enum = message.DESCRIPTOR.fields_by_name[field].enum_type
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    return str(value.name).removeprefix(prefix)


def filter_summary(where: Any) -> str:
    """An AddressFilter in a few words: `addresses domain example.com, text "550-5.1.1"`."""
    parts = []
    if where.statuses:
        parts.append("status " + "|".join(_enum(where, "statuses", s) for s in where.statuses))
    if where.failure_reason:
        parts.append("reason " + _enum(where, "failure_reason", where.failure_reason))
    if where.domain:
        parts.append(f"domain {_shown(where.domain)}")
    if where.error_text:
        parts.append(f"text {_shown(where.error_text)!r}")
    if where.HasField("changed_after"):
        parts.append(f"changed from {_time(where.changed_after)}")
    if where.HasField("changed_before"):
        parts.append(f"changed before {_time(where.changed_before)}")
    return "addresses " + (", ".join(parts) if parts else "(no filter)")


def target_of(request: Any, response: Any) -> str:
    """What a call acted on, from its request (or, for a creation, its response)."""
    for message in (request, response):
        if message is None:
            continue
        fields = message.DESCRIPTOR.fields_by_name
        if "address" in fields and isinstance(message.address, str) and message.address:
            return f"address {_shown(message.address.lower())}"
        if "filter" in fields and "dry_run" in fields:
            dry_run = "; dry run" if message.dry_run else ""
            return filter_summary(message.filter) + dry_run
        for field, label in (("delivery_id", "delivery"), ("recurring_delivery_id", "recurring")):
            if getattr(message, field, 0):
                return f"{label} {getattr(message, field)}"
        for field, label in (("delivery", "delivery"), ("recurring_delivery", "recurring")):
            if message.DESCRIPTOR.fields_by_name.get(field) and message.HasField(field):
                return f"{label} {getattr(message, field).id}"
        if getattr(message, "name", ""):
            return f"operator {message.name}"
        if message.DESCRIPTOR.fields_by_name.get("profiles"):
            return f"profiles {len(message.profiles)}"
    return ""


async def write(
    db: Database, method: str, operator: str, target: str, code: str, context: Any
) -> None:
    event = AuditEvent(
        id=0,
        time=clock.now(),
        operator=operator,
        method=method,
        target=target,
        code=code,
        request_id=request_id.get(),
        peer=str(context.peer() or ""),
    )
    try:
        await operators.record(db, event)
    except Exception:
        # The call is done either way; a lost audit line is said loudly.
        log.exception("audit event not written: %s %s by %r", method, code, operator)


def _code_name(context: Any, error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "UNKNOWN" if error is not None else "OK"


def audited(db: Database, method: str, operator: str, handler: Any) -> Any:
    """The unary handler, writing the call to the trail once it ends."""
    behavior: Callable[[Any, Any], Awaitable[Any]] = handler.unary_unary

    async def call(request: Any, context: Any) -> Any:
        response = error = None
        try:
            response = await behavior(request, context)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            code = _code_name(context, error)
            await write(db, method, operator, target_of(request, response), code, context)

    return grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
