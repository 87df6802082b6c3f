"""Records and domain values as protos."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from typing import Any

from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2

from delivery_service.domain import feedback as fb
from delivery_service.domain import kpis
from delivery_service.domain import quarantine as q
from delivery_service.domain.alerts import RaisedAlert
from delivery_service.proto_enums import (
    ADDRESS_STATUS_PB,
    DROP_REASON_PB,
    FAILURE_REASON_PB,
    FAILURE_TYPE_PB,
    FEED_KIND_PB,
    MODE_PB,
    RECURRING_STATE_PB,
    STATE_PB,
    STATUS_PB,
    STEP_PB,
)
from delivery_service.store.events import FeedEvent
from delivery_service.store.preparation import Analysis
from delivery_service.store.records import Delivery, RecurringDelivery, SendingLog
from delivery_service.validation import encode_cursor


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def micros_timestamp(value: int | None) -> timestamp_pb2.Timestamp | None:
    """Microseconds since the epoch (the address table's unit) as a Timestamp."""
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(value)
    return ts


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def micros(value: dt.datetime) -> int:
    """A time as microseconds since the epoch (page tokens' unit), exactly."""
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def from_micros(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


def smtp_reply(code: int, status: str, text: str) -> pb.SmtpReply | None:
    """The receiving server's reply; None when there was none."""
    if not (code or status or text):
        return None
    return pb.SmtpReply(code=code, enhanced_status=status, text=text)


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
        complaints=k.complaints,
        complaint_percent=k.complaint_percent,
        hard_failed=k.hard_failed,
        soft_failed=k.soft_failed,
        failures=[
            pb.FailureCount(
                failure_type=FAILURE_TYPE_PB[fb.FailureType(t)],
                failure_reason=FAILURE_REASON_PB[fb.FailureReason(r)],
                messages=n,
            )
            for t, r, n in k.failures
        ],
        domains=[pb.DomainKpis(**dataclasses.asdict(d)) for d in k.domains],
        alerts=[alert(a) for a in k.alerts],
        stats_time=timestamp(k.stats_time),
        final=k.final,
        feedback_mode=MODE_PB[k.feedback_mode],
    )


def alert(a: RaisedAlert) -> pb.Alert:
    return pb.Alert(
        delivery_id=a.delivery_id,
        criterion=pb.AlertCriterion.ValueType(a.criterion),
        raise_time=timestamp(a.raise_time),
        value=a.value,
        threshold=a.threshold,
        message=a.message,
        stopped=a.stopped,
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
        complained=s.complained,
        smtp_reply=smtp_reply(s.smtp_code, s.smtp_status, s.smtp_text),
    )


# By the stored number: an event's reason is the MTA's, which may be one the service does
# not know (then unspecified).
_REASON_PB = {int(r): value for r, value in FAILURE_REASON_PB.items()}
_FEED_KIND_PB = {int(k): value for k, value in FEED_KIND_PB.items()}


def delivery_events(into: Any, events: Iterable[FeedEvent]) -> None:
    """Adds events as the feed serves them to a response's repeated field, each with its
    position's cursor ("" for none). The feed serves tens of thousands a second: each is
    built in place (a message made first is copied into the response), with the fields
    that are mostly zero set only when they are not, and its times set field by field on
    each timestamp taken once (cheaper than a Timestamp or a dict)."""
    add = into.add
    for e in events:
        event = add(
            event_id=e.event_id,
            delivery_id=e.delivery_id,
            message_id=e.message_id,
            profile_id=e.profile_id,
            address=e.address,
            kind=_FEED_KIND_PB[e.kind],
            cursor=encode_cursor(e[:3]) if e.xid else "",
        )
        if e.attempt:
            event.attempt = e.attempt
        if e.reason:
            event.reason = _REASON_PB.get(e.reason, 0)
        if e.link_index:
            event.link_index = e.link_index
        if e.smtp_code or e.smtp_status or e.smtp_text:
            event.smtp_reply.code = e.smtp_code
            event.smtp_reply.enhanced_status = e.smtp_status
            event.smtp_reply.text = e.smtp_text
        stamp = event.event_time
        stamp.seconds, micros = divmod(e.event_time, 1_000_000)
        stamp.nanos = micros * 1000
        stamp = event.commit_time
        stamp.seconds, micros = divmod(e.write_time, 1_000_000)
        stamp.nanos = micros * 1000


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


def address(name: str, state: q.AddressState) -> adpb.Address:
    """An address's entry; an address never seen is VALID, with nothing else set."""
    return adpb.Address(
        address=name,
        status=ADDRESS_STATUS_PB[state.status],
        error_count=state.error_count,
        first_error_time=micros_timestamp(state.first_error_time),
        last_error_time=micros_timestamp(state.last_error_time),
        failure_type=FAILURE_TYPE_PB[fb.FailureType(state.failure_type)],
        failure_reason=FAILURE_REASON_PB[fb.FailureReason(state.failure_reason)],
        smtp_reply=smtp_reply(state.smtp_code, state.smtp_status, state.smtp_text),
        delivery_id=state.delivery_id,
        message_id=state.message_id,
        update_time=micros_timestamp(state.update_time),
        changed_by=state.changed_by,
    )
