"""Records and domain values as protos."""

from __future__ import annotations

import datetime as dt

from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2

from delivery_service.domain import kpis
from delivery_service.proto_enums import (
    DROP_REASON_PB,
    FAILURE_REASON_PB,
    FAILURE_TYPE_PB,
    MODE_PB,
    RECURRING_STATE_PB,
    STATE_PB,
    STATUS_PB,
    STEP_PB,
)
from delivery_service.store.preparation import Analysis
from delivery_service.store.records import Delivery, RecurringDelivery, SendingLog


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def duration(value: dt.timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def delivery(d: Delivery) -> pb.Delivery:
    return pb.Delivery(
        id=d.id,
        label=d.label,
        content=pb.Content(subject=d.subject, body=d.body, links=d.links),
        state=STATE_PB[d.state],
        feedback_mode=MODE_PB[d.feedback_mode],
        validity_period=duration(d.validity_period),
        required_approvals=[STEP_PB[s] for s in d.required_approvals],
        approvals=[STEP_PB[s] for s in d.approvals],
        to_deliver=d.to_deliver,
        dropped=d.dropped,
        create_time=timestamp(d.create_time),
        confirm_time=timestamp(d.confirm_time),
        validity_end_time=timestamp(d.validity_end_time),
        recurring_delivery_id=d.recurring_delivery_id or 0,
        confirmed_by=d.confirmed_by or "",
        created_by=d.created_by or "",
    )


def kpis_message(k: kpis.Kpis) -> pb.Kpis:
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
        stats_time=timestamp(k.stats_time),
        final=k.final,
        feedback_mode=MODE_PB[k.feedback_mode],
    )


def sending_log(s: SendingLog) -> pb.SendingLog:
    return pb.SendingLog(
        message_id=s.message_id,
        delivery_id=s.delivery_id,
        profile_id=s.profile_id or "",
        email=s.email,
        status=STATUS_PB[s.status],
        failure_type=FAILURE_TYPE_PB[s.failure_type],
        failure_reason=FAILURE_REASON_PB[s.failure_reason],
        relay_time=timestamp(s.relay_time),
        update_time=timestamp(s.update_time),
        opened=s.opened,
        clicked=s.clicked,
    )


def recurring(r: RecurringDelivery) -> pb.RecurringDelivery:
    return pb.RecurringDelivery(
        id=r.id,
        label=r.label,
        interval=duration(r.occurrence_interval),
        confirm_before_send=r.confirm_before_send,
        next_occurrence_time=timestamp(r.next_occurrence_time),
        occurrences=r.occurrences,
        state=RECURRING_STATE_PB[r.state],
        created_by=r.created_by or "",
    )


def analysis(delivery_record: Delivery, a: Analysis) -> pb.PrepareDeliveryResponse:
    counts = sorted(a.dropped_by_reason.items(), key=lambda item: DROP_REASON_PB[item[0]])
    return pb.PrepareDeliveryResponse(
        delivery=delivery(delivery_record),
        targeted=a.targeted,
        to_deliver=a.to_deliver,
        dropped_by_reason={str(reason): n for reason, n in counts},
        dropped_counts=[pb.DropCount(reason=DROP_REASON_PB[r], count=n) for r, n in counts],
        dropped=[
            pb.DroppedRecipient(
                recipient=(
                    pb.Recipient(email=r.email or "")
                    if r.profile_id is None
                    else pb.Recipient(profile_id=r.profile_id)
                ),
                reason=DROP_REASON_PB[r.reason],
            )
            for r in a.dropped
        ],
    )
