"""The gRPC servicer: checks requests, calls storage and the domain, maps the answers."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from delivery_service import auth, store, validation
from delivery_service.domain import feedback as fb
from delivery_service.domain import kpis as kpi
from delivery_service.domain import lifecycle
from delivery_service.validation import Invalid

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")

_STATE_PB = {v: k for k, v in validation.STATES.items()}
_MODE_PB = {v: k for k, v in validation.FEEDBACK_MODES.items()}
_STEP_PB = {v: k for k, v in validation.APPROVAL_STEPS.items()}
_STATUSES = {int(s): s for s in fb.Status}
_DROP_REASONS = {
    "DUPLICATE": pb.DROP_REASON_DUPLICATE,
    "INVALID_ADDRESS": pb.DROP_REASON_INVALID_ADDRESS,
    "QUARANTINED": pb.DROP_REASON_QUARANTINED,
    "UNKNOWN_PROFILE": pb.DROP_REASON_UNKNOWN_PROFILE,
    "NO_ADDRESS": pb.DROP_REASON_NO_ADDRESS,
}
# How often WatchDeployment looks at the counters: cheap, they are O(1) to read.
WATCH_INTERVAL = 0.2


def _status(code: grpc.StatusCode, message: str, detail: Any = None) -> grpc.Status:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


def _mapped(exc: Exception) -> grpc.Status | None:
    """The status a known error becomes; None for a bug."""
    if isinstance(exc, Invalid):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=exc.field, description=exc.description
        )
        return _status(
            grpc.StatusCode.INVALID_ARGUMENT,
            str(exc),
            error_details_pb2.BadRequest(field_violations=[violation]),
        )
    table: list[tuple[type[Exception], grpc.StatusCode]] = [
        (auth.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
        (auth.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
        (store.NotFound, grpc.StatusCode.NOT_FOUND),
        (store.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
        (store.Unavailable, grpc.StatusCode.UNAVAILABLE),
    ]
    for kind, code in table:
        if isinstance(exc, kind):
            return _status(code, str(exc))
    return None


def _errors(
    method: Callable[
        [Any, Request, grpc.aio.ServicerContext[Request, Response]], Awaitable[Response]
    ],
) -> Callable[[Any, Request, grpc.aio.ServicerContext[Request, Response]], Awaitable[Response]]:
    """Turns the service's errors into gRPC statuses (unary methods)."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Request, context: grpc.aio.ServicerContext[Request, Response]
    ) -> Response:
        try:
            return await method(self, request, context)
        except Exception as exc:
            status = _mapped(exc)
            if status is None:
                raise
            await context.abort_with_status(status)
            raise AssertionError("unreachable") from exc

    return wrapper


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _duration(value: dt.timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def delivery_pb(row: store.Row) -> pb.Delivery:
    return pb.Delivery(
        id=row["id"],
        label=row["label"],
        content=pb.Content(subject=row["subject"], body=row["body"], links=row["links"]),
        state=_STATE_PB[lifecycle.State(row["state"])],
        feedback_mode=_MODE_PB[fb.FeedbackMode(row["feedback_mode"])],
        validity_period=_duration(row["validity_period"]),
        required_approvals=[_STEP_PB[lifecycle.ApprovalStep(s)] for s in row["required_approvals"]],
        approvals=[_STEP_PB[lifecycle.ApprovalStep(s)] for s in row["approvals"]],
        to_deliver=row["to_deliver"],
        dropped=row["dropped"],
        create_time=_ts(row["create_time"]),
        confirm_time=_ts(row["confirm_time"]),
        validity_end_time=_ts(row["validity_end_time"]),
        recurring_delivery_id=row["recurring_delivery_id"] or 0,
        confirmed_by=row["confirmed_by"] or "",
    )


def kpis_of(delivery: store.Row, counters: kpi.Counters) -> kpi.Kpis:
    return kpi.compute(
        fb.FeedbackMode(delivery["feedback_mode"]),
        delivery["to_deliver"],
        counters,
        opened_at_stats=delivery["opened_at_stats"],
        clicked_at_stats=delivery["clicked_at_stats"],
        stats_time=delivery["stats_time"],
        final=delivery["state"] == lifecycle.State.FINISHED,
    )


def kpis_pb(k: kpi.Kpis) -> pb.Kpis:
    return pb.Kpis(
        to_deliver=k.to_deliver,
        sent=k.sent,
        delivered=k.delivered,
        failed=k.failed,
        pending=k.pending,
        opened=k.opened,
        clicked=k.clicked,
        delivered_percent=k.delivered_percent,
        bounces_percent=k.bounces_percent,
        open_percent=k.open_percent,
        click_percent=k.click_percent,
        stats_time=_ts(k.stats_time),
        final=k.final,
        feedback_mode=_MODE_PB[k.feedback_mode],
    )


def sending_log_pb(row: store.Row) -> pb.SendingLog:
    return pb.SendingLog(
        message_id=row["message_id"],
        delivery_id=row["delivery_id"],
        profile_id=row["profile_id"] or "",
        email=row["email"],
        status=row["status"],
        failure_type=row["failure_type"],
        failure_reason=row["failure_reason"],
        relay_time=_ts(row["relay_time"]),
        update_time=_ts(row["update_time"]),
        opened=row["opened"],
        clicked=row["clicked"],
    )


def recurring_pb(row: store.Row) -> pb.RecurringDelivery:
    return pb.RecurringDelivery(
        id=row["id"],
        label=row["label"],
        interval=_duration(row["occurrence_interval"]),
        confirm_before_send=row["confirm_before_send"],
        next_occurrence_time=_ts(row["next_occurrence_time"]),
        occurrences=row["occurrences"],
    )


def _next_token(rows: list[store.Row], key: str, limit: int, scope: str) -> str:
    return validation.encode_page_token(rows[-1][key], scope) if len(rows) == limit else ""


class DeliveryServicer(pb_grpc.DeliveryServiceServicer):
    def __init__(self, db: store.Store) -> None:
        self.db = db

    async def _operator(
        self, context: grpc.aio.ServicerContext[Any, Any], role: lifecycle.Role
    ) -> str:
        token = auth.bearer_token(context.invocation_metadata())
        return await auth.require(self.db, token, role)

    @_errors
    async def CreateDelivery(
        self, request: pb.CreateDeliveryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateDeliveryResponse:
        new = validation.new_delivery(request)
        return pb.CreateDeliveryResponse(delivery=delivery_pb(await self.db.create_delivery(new)))

    @_errors
    async def PrepareDelivery(
        self, request: pb.PrepareDeliveryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PrepareDeliveryResponse:
        analysis = await self.db.prepare(validation.positive_id("delivery_id", request.delivery_id))
        return pb.PrepareDeliveryResponse(
            delivery=delivery_pb(analysis.delivery),
            targeted=analysis.targeted,
            to_deliver=analysis.to_deliver,
            dropped_by_reason=analysis.dropped_by_reason,
            dropped=[
                pb.DroppedRecipient(
                    recipient=(
                        pb.Recipient(email=r["email"])
                        if r["profile_id"] is None
                        else pb.Recipient(profile_id=r["profile_id"])
                    ),
                    reason=_DROP_REASONS[r["reason"]],
                )
                for r in analysis.dropped
            ],
        )

    @_errors
    async def ApproveDelivery(
        self, request: pb.ApproveDeliveryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ApproveDeliveryResponse:
        await self._operator(context, lifecycle.Role.APPROVE_DELIVERIES)
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        step = validation.enum_value("step", request.step, validation.APPROVAL_STEPS)
        return pb.ApproveDeliveryResponse(
            delivery=delivery_pb(await self.db.approve(delivery_id, step))
        )

    @_errors
    async def ConfirmSend(
        self, request: pb.ConfirmSendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ConfirmSendResponse:
        operator = await self._operator(context, lifecycle.Role.START_DELIVERIES)
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        delivery, started = await self.db.confirm(delivery_id, operator)
        if started:
            log.info("delivery %d confirmed by %s", delivery_id, operator)
        return pb.ConfirmSendResponse(delivery=delivery_pb(delivery))

    @_errors
    async def StopDelivery(
        self, request: pb.StopDeliveryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StopDeliveryResponse:
        await self._operator(context, lifecycle.Role.START_DELIVERIES)
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        return pb.StopDeliveryResponse(delivery=delivery_pb(await self.db.stop(delivery_id)))

    @_errors
    async def GetDelivery(
        self, request: pb.GetDeliveryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetDeliveryResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        return pb.GetDeliveryResponse(delivery=delivery_pb(await self.db.get_delivery(delivery_id)))

    @_errors
    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListDeliveriesResponse:
        limit = validation.page_size("page_size", request.page_size)
        state = None
        if request.state != pb.STATE_UNSPECIFIED:
            state = validation.enum_value("state", request.state, validation.STATES)
        if request.recurring_delivery_id < 0:
            raise Invalid("recurring_delivery_id", "must not be negative")
        scope = f"ListDeliveries:{state}:{request.recurring_delivery_id}"
        before = validation.page_token("page_token", request.page_token, 2**63 - 1, scope)
        rows = await self.db.list_deliveries(
            before_id=before,
            state=state,
            recurring_delivery_id=request.recurring_delivery_id or None,
            limit=limit,
        )
        return pb.ListDeliveriesResponse(
            deliveries=[delivery_pb(r) for r in rows],
            next_page_token=_next_token(rows, "id", limit, scope),
        )

    async def WatchDeployment(
        self, request: pb.WatchDeploymentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchDeploymentResponse]:
        try:
            delivery_id = validation.positive_id("delivery_id", request.delivery_id)
            last = None
            while True:
                delivery, counters = await self.db.delivery_and_counters(delivery_id)
                k = kpis_of(delivery, counters)
                update = pb.WatchDeploymentResponse(
                    state=_STATE_PB[lifecycle.State(delivery["state"])],
                    to_deliver=k.to_deliver,
                    relayed=k.sent,
                    percent=kpi.percent(k.sent, k.to_deliver),
                    kpis=kpis_pb(k),
                )
                if update != last:
                    yield update
                    last = update
                if delivery["state"] in (lifecycle.State.FINISHED, lifecycle.State.STOPPED):
                    return
                await asyncio.sleep(WATCH_INTERVAL)
        except Exception as exc:
            status = _mapped(exc)
            if status is None:
                raise
            await context.abort_with_status(status)

    @_errors
    async def GetKpis(
        self, request: pb.GetKpisRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetKpisResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        delivery, counters = await self.db.delivery_and_counters(delivery_id)
        return pb.GetKpisResponse(kpis=kpis_pb(kpis_of(delivery, counters)))

    @_errors
    async def ComputeStats(
        self, request: pb.ComputeStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ComputeStatsResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        delivery, counters, repaired = await self.db.compute_stats(delivery_id)
        if repaired:
            log.warning("delivery %d: %d counters had drifted, repaired", delivery_id, repaired)
        return pb.ComputeStatsResponse(
            kpis=kpis_pb(kpis_of(delivery, counters)), repaired_counters=repaired
        )

    @_errors
    async def ListSendingLogs(
        self, request: pb.ListSendingLogsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListSendingLogsResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        status = None
        if request.status != pb.SENDING_STATUS_UNSPECIFIED:
            status = validation.enum_value("status", request.status, _STATUSES)
        limit = validation.page_size("page_size", request.page_size)
        scope = f"ListSendingLogs:{delivery_id}:{status}"
        after = validation.page_token("page_token", request.page_token, 0, scope)
        rows = await self.db.list_sending_logs(delivery_id, status, after, limit)
        return pb.ListSendingLogsResponse(
            sending_logs=[sending_log_pb(r) for r in rows],
            next_page_token=_next_token(rows, "message_id", limit, scope),
        )

    @_errors
    async def GetProfileHistory(
        self, request: pb.GetProfileHistoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetProfileHistoryResponse:
        which = request.WhichOneof("profile")
        profile_id = email = None
        if which == "profile_id":
            profile_id = validation.text("profile_id", request.profile_id, validation.MAX_ID)
        elif which == "email":
            email = validation.email("email", request.email)
        else:
            raise Invalid("profile", "required: profile_id or email")
        limit = validation.page_size("page_size", request.page_size)
        scope = f"GetProfileHistory:{profile_id}:{email}"
        before = validation.page_token("page_token", request.page_token, 2**63 - 1, scope)
        rows = await self.db.history(profile_id=profile_id, email=email, before=before, limit=limit)
        return pb.GetProfileHistoryResponse(
            sending_logs=[sending_log_pb(r) for r in rows],
            next_page_token=_next_token(rows, "message_id", limit, scope),
        )

    @_errors
    async def UpsertProfiles(
        self, request: pb.UpsertProfilesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UpsertProfilesResponse:
        created, updated = await self.db.upsert_profiles(
            validation.profiles(list(request.profiles))
        )
        return pb.UpsertProfilesResponse(created=created, updated=updated)

    @_errors
    async def CreateRecurringDelivery(
        self,
        request: pb.CreateRecurringDeliveryRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.CreateRecurringDeliveryResponse:
        new = validation.new_delivery(request)
        interval = validation.duration(
            "interval", request.interval, validation.MIN_INTERVAL, validation.MAX_INTERVAL
        )
        first = None
        if request.HasField("first_occurrence_time"):
            first = validation.timestamp("first_occurrence_time", request.first_occurrence_time)
        row = await self.db.create_recurring(new, interval, first, request.confirm_before_send)
        return pb.CreateRecurringDeliveryResponse(recurring_delivery=recurring_pb(row))

    @_errors
    async def GetRecurringDelivery(
        self, request: pb.GetRecurringDeliveryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetRecurringDeliveryResponse:
        recurring_id = validation.positive_id(
            "recurring_delivery_id", request.recurring_delivery_id
        )
        row = await self.db.get_recurring(recurring_id)
        occurrences = await self.db.list_deliveries(
            before_id=2**63 - 1, state=None, recurring_delivery_id=recurring_id, limit=100
        )
        return pb.GetRecurringDeliveryResponse(
            recurring_delivery=recurring_pb(row),
            occurrences=[delivery_pb(r) for r in occurrences],
        )
