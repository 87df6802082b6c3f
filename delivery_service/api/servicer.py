"""The gRPC servicer: checks each request, calls a use case, maps the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc

from delivery_service import auth, authorization, validation
from delivery_service.api import convert, errors
from delivery_service.api.errors import Context
from delivery_service.domain import kpis
from delivery_service.domain.recurring import Control
from delivery_service.domain.requests import NewRecurring
from delivery_service.domain.roles import Role
from delivery_service.proto_enums import STATE_PB
from delivery_service.store.connection import Database
from delivery_service.usecases import deliveries, figures, recurring
from delivery_service.usecases.watch import Watches
from delivery_service.validation import Invalid

# How often WatchDeployment looks at the counters: cheap, they are O(1) to read.
WATCH_INTERVAL = 0.2
_LAST = 2**63 - 1


class DeliveryServicer(pb_grpc.DeliveryServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db
        # One read per watched delivery per interval, shared by its watchers.
        self.watches = Watches(lambda delivery_id: figures.current(db, delivery_id), WATCH_INTERVAL)

    @errors.unary
    async def CreateDelivery(
        self, request: pb.CreateDeliveryRequest, context: Context
    ) -> pb.CreateDeliveryResponse:
        operator = authorization.current_operator.get().name
        created = await deliveries.create(self.db, validation.new_delivery(request), operator)
        return pb.CreateDeliveryResponse(delivery=convert.delivery(created))

    @errors.unary
    async def PrepareDelivery(
        self, request: pb.PrepareDeliveryRequest, context: Context
    ) -> pb.PrepareDeliveryResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        prepared = await deliveries.prepare(self.db, delivery_id)
        return convert.analysis(prepared.delivery, prepared.analysis)

    @errors.unary
    async def ApproveDelivery(
        self, request: pb.ApproveDeliveryRequest, context: Context
    ) -> pb.ApproveDeliveryResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        step = validation.enum_value("step", request.step, validation.APPROVAL_STEPS)
        approved = await deliveries.approve(self.db, delivery_id, step)
        return pb.ApproveDeliveryResponse(delivery=convert.delivery(approved))

    @errors.unary
    async def ConfirmSend(
        self, request: pb.ConfirmSendRequest, context: Context
    ) -> pb.ConfirmSendResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        operator = authorization.current_operator.get()
        confirmed = await deliveries.confirm(self.db, delivery_id, operator.name)
        return pb.ConfirmSendResponse(delivery=convert.delivery(confirmed))

    @errors.unary
    async def StopDelivery(
        self, request: pb.StopDeliveryRequest, context: Context
    ) -> pb.StopDeliveryResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        stopped = await deliveries.stop(self.db, delivery_id)
        return pb.StopDeliveryResponse(delivery=convert.delivery(stopped))

    @errors.unary
    async def GetDelivery(
        self, request: pb.GetDeliveryRequest, context: Context
    ) -> pb.GetDeliveryResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        found = await deliveries.get(self.db, delivery_id)
        return pb.GetDeliveryResponse(delivery=convert.delivery(found))

    @errors.unary
    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: Context
    ) -> pb.ListDeliveriesResponse:
        limit = validation.page_size("page_size", request.page_size)
        state = None
        if request.state != pb.STATE_UNSPECIFIED:
            state = validation.enum_value("state", request.state, validation.STATES)
        if request.recurring_delivery_id < 0:
            raise Invalid("recurring_delivery_id", "must not be negative")
        full = validation.enum_value("view", request.view, validation.VIEWS)
        scope = f"ListDeliveries:{state}:{request.recurring_delivery_id}:{full}"
        before = validation.page_token("page_token", request.page_token, _LAST, scope)
        page, cut = await deliveries.page(
            self.db,
            before_id=before,
            state=state,
            recurring_delivery_id=request.recurring_delivery_id or None,
            limit=limit,
            full=full,
        )
        ids = [d.id for d in page]
        return pb.ListDeliveriesResponse(
            deliveries=[convert.delivery(d) for d in page],
            next_page_token=validation.next_page_token(ids, limit, scope, more=cut),
        )

    @errors.streaming
    async def WatchDeployment(
        self, request: pb.WatchDeploymentRequest, context: Context
    ) -> AsyncIterator[pb.WatchDeploymentResponse]:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        last = None
        async for now in self.watches.watch(delivery_id):
            k = figures.kpis_of(now)
            update = pb.WatchDeploymentResponse(
                state=STATE_PB[now.state],
                to_deliver=k.to_deliver,
                sent=k.sent,
                relayed=k.sent,
                percent=kpis.percent(k.sent, k.to_deliver),
                kpis=convert.kpis_message(k),
            )
            if update != last:
                yield update
                last = update

    @errors.unary
    async def GetKpis(self, request: pb.GetKpisRequest, context: Context) -> pb.GetKpisResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        now = await figures.current(self.db, delivery_id)
        return pb.GetKpisResponse(kpis=convert.kpis_message(figures.kpis_of(now)))

    @errors.unary
    async def ComputeStats(
        self, request: pb.ComputeStatsRequest, context: Context
    ) -> pb.ComputeStatsResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        k, repaired = await figures.compute_stats(self.db, delivery_id)
        return pb.ComputeStatsResponse(kpis=convert.kpis_message(k), repaired_counters=repaired)

    @errors.unary
    async def ListSendingLogs(
        self, request: pb.ListSendingLogsRequest, context: Context
    ) -> pb.ListSendingLogsResponse:
        delivery_id = validation.positive_id("delivery_id", request.delivery_id)
        status = None
        if request.status != pb.SENDING_STATUS_UNSPECIFIED:
            status = validation.enum_value("status", request.status, validation.STATUSES)
        limit = validation.page_size("page_size", request.page_size)
        scope = f"ListSendingLogs:{delivery_id}:{status}"
        after = validation.page_token("page_token", request.page_token, 0, scope)
        page = await deliveries.sending_logs(self.db, delivery_id, status, after, limit)
        return pb.ListSendingLogsResponse(
            sending_logs=[convert.sending_log(s) for s in page],
            next_page_token=validation.next_page_token([s.message_id for s in page], limit, scope),
        )

    @errors.unary
    async def GetProfileHistory(
        self, request: pb.GetProfileHistoryRequest, context: Context
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
        before = validation.page_token("page_token", request.page_token, _LAST, scope)
        page = await deliveries.history(
            self.db, profile_id=profile_id, email=email, before=before, limit=limit
        )
        return pb.GetProfileHistoryResponse(
            sending_logs=[convert.sending_log(s) for s in page],
            next_page_token=validation.next_page_token([s.message_id for s in page], limit, scope),
        )

    @errors.unary
    async def UpsertProfiles(
        self, request: pb.UpsertProfilesRequest, context: Context
    ) -> pb.UpsertProfilesResponse:
        updates = validation.profiles(list(request.profiles))
        created, updated = await deliveries.upsert_profiles(self.db, updates)
        return pb.UpsertProfilesResponse(created=created, updated=updated)

    @errors.unary
    async def CreateRecurringDelivery(
        self, request: pb.CreateRecurringDeliveryRequest, context: Context
    ) -> pb.CreateRecurringDeliveryResponse:
        if not request.confirm_before_send:
            # Sending unattended confirms every occurrence in advance.
            auth.check(authorization.current_operator.get(), Role.START_DELIVERIES)
        template = validation.new_delivery(request)
        interval = validation.duration(
            "interval", request.interval, validation.MIN_INTERVAL, validation.MAX_INTERVAL
        )
        first = None
        if request.HasField("first_occurrence_time"):
            first = validation.timestamp("first_occurrence_time", request.first_occurrence_time)
        created = await recurring.create(
            self.db,
            NewRecurring(template, interval, first, request.confirm_before_send),
            authorization.current_operator.get().name,
        )
        return pb.CreateRecurringDeliveryResponse(recurring_delivery=convert.recurring(created))

    @errors.unary
    async def GetRecurringDelivery(
        self, request: pb.GetRecurringDeliveryRequest, context: Context
    ) -> pb.GetRecurringDeliveryResponse:
        recurring_id = validation.positive_id(
            "recurring_delivery_id", request.recurring_delivery_id
        )
        found, occurrences = await recurring.get(self.db, recurring_id)
        return pb.GetRecurringDeliveryResponse(
            recurring_delivery=convert.recurring(found),
            occurrences=[convert.delivery(d) for d in occurrences],
        )

    async def _control(self, recurring_delivery_id: int, control: Control) -> pb.RecurringDelivery:
        recurring_id = validation.positive_id("recurring_delivery_id", recurring_delivery_id)
        return convert.recurring(await recurring.control(self.db, recurring_id, control))

    @errors.unary
    async def PauseRecurringDelivery(
        self, request: pb.PauseRecurringDeliveryRequest, context: Context
    ) -> pb.PauseRecurringDeliveryResponse:
        paused = await self._control(request.recurring_delivery_id, Control.PAUSE)
        return pb.PauseRecurringDeliveryResponse(recurring_delivery=paused)

    @errors.unary
    async def ResumeRecurringDelivery(
        self, request: pb.ResumeRecurringDeliveryRequest, context: Context
    ) -> pb.ResumeRecurringDeliveryResponse:
        resumed = await self._control(request.recurring_delivery_id, Control.RESUME)
        return pb.ResumeRecurringDeliveryResponse(recurring_delivery=resumed)

    @errors.unary
    async def CancelRecurringDelivery(
        self, request: pb.CancelRecurringDeliveryRequest, context: Context
    ) -> pb.CancelRecurringDeliveryResponse:
        cancelled = await self._control(request.recurring_delivery_id, Control.CANCEL)
        return pb.CancelRecurringDeliveryResponse(recurring_delivery=cancelled)
