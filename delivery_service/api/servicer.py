"""The gRPC servicer: checks each request, calls a use case, maps the answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc

from delivery_service import auth, authorization, observability, validation
from delivery_service.api import convert, errors
from delivery_service.api.errors import Context
from delivery_service.domain import kpis
from delivery_service.domain import quarantine as q
from delivery_service.domain.alerts import Criterion
from delivery_service.domain.recurring import Control
from delivery_service.domain.requests import NewRecurring
from delivery_service.domain.roles import Role
from delivery_service.proto_enums import STATE_PB
from delivery_service.store.connection import Database
from delivery_service.usecases import alerts, deliveries, events, figures, recurring
from delivery_service.usecases.feed_watch import FeedWatches
from delivery_service.usecases.shared_reads import SharedReads
from delivery_service.usecases.watch import Watches

# How often WatchDeployment looks at the counters (cheap, they are O(1) to read), and
# WatchDeliveryEvents at the end of the feed.
WATCH_INTERVAL = 0.2
# Events a watch stream's read of the feed takes at most.
FEED_PAGE = 1000
_LAST = 2**63 - 1


# A page token's criterion, checked.
CRITERIA = {int(c): c for c in Criterion}


class DeliveryServicer(pb_grpc.DeliveryServiceServicer):
    def __init__(self, db: Database, address_rules: q.Rules = q.DEFAULT_RULES) -> None:
        self.db = db
        self.address_rules = address_rules
        # One read per watched delivery per interval, shared by its watchers.
        self.watches = Watches(lambda delivery_id: figures.current(db, delivery_id), WATCH_INTERVAL)
        # One read of the event feed per filter per interval, shared by its watchers.
        self.feed_watches = FeedWatches(
            lambda delivery_id, after: events.read(db, delivery_id, after, FEED_PAGE),
            WATCH_INTERVAL,
        )
        observability.FEED_WATCHERS.set_function(lambda: self.feed_watches.watching)
        # GetKpis of one delivery by callers at once: one read (and one answer built) at a
        # time, each started after the calls it answers arrived.
        self.kpis_reads: SharedReads[int, pb.GetKpisResponse] = SharedReads(self._kpis)

    @errors.unary
    async def CreateDelivery(
        self, request: pb.CreateDeliveryRequest, context: Context
    ) -> pb.CreateDeliveryResponse:
        operator = authorization.current_operator.get().name
        created = await deliveries.create(self.db, validation.new_delivery(request), operator)
        return pb.CreateDeliveryResponse(delivery=convert.delivery(created))

    @errors.unary
    async def AddRecipients(
        self, request: pb.AddRecipientsRequest, context: Context
    ) -> pb.AddRecipientsResponse:
        with validation.Checks() as check:
            delivery_id = check(validation.positive_id, "delivery_id", request.delivery_id)
            recipients = check(validation.recipient_list, "recipients", request.recipients)
            position = check(
                validation.list_position, "position", request.position, len(recipients or ())
            )
        length = await deliveries.add_recipients(self.db, delivery_id, position, recipients)
        return pb.AddRecipientsResponse(length=length)

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
        with validation.Checks() as check:
            delivery_id = check(validation.positive_id, "delivery_id", request.delivery_id)
            step = check(validation.enum_value, "step", request.step, validation.APPROVAL_STEPS)
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
        with validation.Checks() as check:
            limit = check(validation.page_size, "page_size", request.page_size)
            state = None
            if request.state != pb.STATE_UNSPECIFIED:
                state = check(validation.enum_value, "state", request.state, validation.STATES)
            if request.recurring_delivery_id < 0:
                check.fail("recurring_delivery_id", "must not be negative")
            full = check(validation.enum_value, "view", request.view, validation.VIEWS)
        # The token is bound to the filters: checked once they are known to be good.
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
        return await self.kpis_reads.get(delivery_id)

    async def _kpis(self, delivery_id: int) -> pb.GetKpisResponse:
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
        with validation.Checks() as check:
            delivery_id = check(validation.positive_id, "delivery_id", request.delivery_id)
            status = None
            if request.status != pb.SENDING_STATUS_UNSPECIFIED:
                status = check(validation.enum_value, "status", request.status, validation.STATUSES)
            limit = check(validation.page_size, "page_size", request.page_size)
        scope = f"ListSendingLogs:{delivery_id}:{status}"
        after = validation.page_token("page_token", request.page_token, 0, scope)
        page = await deliveries.sending_logs(self.db, delivery_id, status, after, limit)
        return pb.ListSendingLogsResponse(
            sending_logs=[convert.sending_log(s) for s in page],
            next_page_token=validation.next_page_token([s.message_id for s in page], limit, scope),
        )

    @errors.unary
    async def ListAlerts(
        self, request: pb.ListAlertsRequest, context: Context
    ) -> pb.ListAlertsResponse:
        delivery_id = None
        with validation.Checks() as check:
            if request.delivery_id:
                delivery_id = check(validation.positive_id, "delivery_id", request.delivery_id)
            limit = check(validation.page_size, "page_size", request.page_size)
        scope = f"ListAlerts:{delivery_id}"
        token = validation.keyset_token(
            "page_token", request.page_token, scope, validation.alert_key
        )
        after = None
        if token is not None:
            micros, key = token
            after_delivery, after_criterion = key.split(":")
            after = (
                convert.from_micros(micros),
                int(after_delivery),
                validation.enum_value("page_token", int(after_criterion), CRITERIA),
            )
        page = await alerts.page(self.db, delivery_id, after, limit)
        return pb.ListAlertsResponse(
            alerts=[convert.alert(a) for a in page],
            next_page_token=validation.next_keyset_token(
                [
                    (convert.micros(a.raise_time), f"{a.delivery_id}:{int(a.criterion)}")
                    for a in page
                ],
                limit,
                scope,
            ),
        )

    @errors.unary
    async def ListDeliveryEvents(
        self, request: pb.ListDeliveryEventsRequest, context: Context
    ) -> pb.ListDeliveryEventsResponse:
        delivery_id = None
        with validation.Checks() as check:
            if request.delivery_id:
                delivery_id = check(validation.positive_id, "delivery_id", request.delivery_id)
            kinds = check(validation.feed_kinds, "kinds", request.kinds)
            limit = check(validation.feed_page_size, "page_size", request.page_size)
            after = check(validation.cursor, "after", request.after)
        found, position, caught_up = await events.page(self.db, delivery_id, kinds, after, limit)
        observability.FEED_EVENTS_SERVED.labels("ListDeliveryEvents").inc(len(found))
        response = pb.ListDeliveryEventsResponse(
            next_cursor=validation.encode_cursor(position),
            caught_up=caught_up,
        )
        convert.delivery_events(response.events, found)
        return response

    @errors.streaming
    async def WatchDeliveryEvents(
        self, request: pb.WatchDeliveryEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchDeliveryEventsResponse]:
        delivery_id = None
        with validation.Checks() as check:
            if request.delivery_id:
                delivery_id = check(validation.positive_id, "delivery_id", request.delivery_id)
            kinds = check(validation.feed_kinds, "kinds", request.kinds)
            after = check(validation.cursor, "after", request.after)
            if request.from_end and request.after:
                check.fail("from_end", "must not be set with after")
        after = await events.start(self.db, delivery_id, after, from_end=request.from_end)
        # The cursor it starts from first: a consumer starting at the end learns it.
        yield pb.WatchDeliveryEventsResponse(cursor=validation.encode_cursor(after))
        served = observability.FEED_EVENTS_SERVED.labels("WatchDeliveryEvents")
        async for found, position in self.feed_watches.watch(delivery_id, after):
            wanted = events.of_kinds(found, kinds)
            if wanted:
                # Once per response, for its oldest write: a histogram's observation per
                # event cost as much as building the event.
                oldest = min(e.write_time for e in wanted) / 1_000_000
                observability.FEED_LAG.observe(max(0.0, time.time() - oldest))
            served.inc(len(wanted))
            response = pb.WatchDeliveryEventsResponse(cursor=validation.encode_cursor(position))
            convert.delivery_events(response.events, wanted)
            yield response

    @errors.unary
    async def GetMessageTimeline(
        self, request: pb.GetMessageTimelineRequest, context: Context
    ) -> pb.GetMessageTimelineResponse:
        with validation.Checks() as check:
            delivery_id = check(validation.positive_id, "delivery_id", request.delivery_id)
            message_id = check(validation.positive_id, "message_id", request.message_id)
        response = pb.GetMessageTimelineResponse()
        convert.delivery_events(
            response.events, await events.timeline(self.db, delivery_id, message_id)
        )
        return response

    @errors.unary
    async def GetProfileHistory(
        self, request: pb.GetProfileHistoryRequest, context: Context
    ) -> pb.GetProfileHistoryResponse:
        which = request.WhichOneof("profile")
        profile_id = email = None
        with validation.Checks() as check:
            if which == "profile_id":
                profile_id = check(
                    validation.text, "profile_id", request.profile_id, validation.MAX_ID
                )
            elif which == "email":
                email = check(validation.email, "email", request.email)
            else:
                check.fail("profile", "required: profile_id or email")
            limit = check(validation.page_size, "page_size", request.page_size)
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
        created, updated = await deliveries.upsert_profiles(
            self.db, updates, authorization.current_operator.get().name, self.address_rules
        )
        return pb.UpsertProfilesResponse(created=created, updated=updated)

    @errors.unary
    async def CreateRecurringDelivery(
        self, request: pb.CreateRecurringDeliveryRequest, context: Context
    ) -> pb.CreateRecurringDeliveryResponse:
        if not request.confirm_before_send:
            # Sending unattended confirms every occurrence in advance.
            auth.check(authorization.current_operator.get(), Role.START_DELIVERIES)
        first = None
        with validation.Checks() as check:
            template = check(validation.new_delivery, request)
            interval = check(
                validation.duration,
                "interval",
                request.interval,
                validation.MIN_INTERVAL,
                validation.MAX_INTERVAL,
            )
            if request.HasField("first_occurrence_time"):
                first = check(
                    validation.timestamp, "first_occurrence_time", request.first_occurrence_time
                )
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
