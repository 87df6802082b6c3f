"""Every RPC refuses bad input with the right status, a message naming the field, and no write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.integration import flows
from tests.integration.conftest import Pair

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

# Enum numbers no version of the proto defines.
STEP_7 = pb.ApprovalStep.ValueType(7)
STATUS_12 = pb.SendingStatus.ValueType(12)

TABLES = [
    "operators", "profiles", "targets", "target_recipients", "deliveries", "recurring_deliveries",
    "dropped_recipients", "sending_logs", "feedback_events", "delivery_counters",
]  # fmt: skip


def good() -> pb.CreateDeliveryRequest:
    return flows.request(["a@example.com"])


def with_(req: pb.CreateDeliveryRequest, change: Callable[[pb.CreateDeliveryRequest], Any]) -> Any:
    change(req)
    return req


def _recipient_list(*emails: str) -> pb.Target:
    return pb.Target(
        recipients=pb.RecipientList(recipients=[pb.Recipient(email=e) for e in emails])
    )


# (name, rpc, request, expected code, text the message must contain)
CASES: list[tuple[str, str, Any, grpc.StatusCode, str]] = [
    ("empty create", "CreateDelivery", pb.CreateDeliveryRequest(), INVALID, "content"),
    ("no label", "CreateDelivery", with_(good(), lambda r: setattr(r, "label", "")),
     INVALID, "label"),
    ("label too long", "CreateDelivery", with_(good(), lambda r: setattr(r, "label", "x" * 201)),
     INVALID, "label"),
    ("no subject", "CreateDelivery",
     with_(good(), lambda r: setattr(r.content, "subject", "")), INVALID, "content.subject"),
    ("body too big", "CreateDelivery",
     with_(good(), lambda r: setattr(r.content, "body", "x" * (1 << 20 + 1))),
     INVALID, "content.body"),
    ("bad link", "CreateDelivery",
     with_(good(), lambda r: r.content.links.append("javascript:alert(1)")),
     INVALID, "content.links[1]"),
    ("no target", "CreateDelivery", with_(good(), lambda r: r.ClearField("target")),
     INVALID, "target"),
    ("empty recipients", "CreateDelivery",
     with_(good(), lambda r: r.target.CopyFrom(_recipient_list())), INVALID, "target.recipients"),
    ("malformed address", "CreateDelivery",
     with_(good(), lambda r: r.target.CopyFrom(_recipient_list("ok@example.com", "not an@"))),
     INVALID, "target.recipients.recipients[1].email"),
    ("empty address", "CreateDelivery",
     with_(good(), lambda r: r.target.CopyFrom(_recipient_list(""))),
     INVALID, "target.recipients.recipients[0].email"),
    ("too many recipients", "CreateDelivery",
     with_(good(), lambda r: r.target.CopyFrom(
         _recipient_list(*(f"u{i}@example.com" for i in range(100_001))))),
     INVALID, "target.recipients"),
    ("no validity", "CreateDelivery", with_(good(), lambda r: r.ClearField("validity_period")),
     INVALID, "validity_period"),
    ("negative validity", "CreateDelivery",
     with_(good(), lambda r: r.validity_period.CopyFrom(duration_pb2.Duration(seconds=-5))),
     INVALID, "validity_period"),
    ("validity too long", "CreateDelivery",
     with_(good(), lambda r: r.validity_period.CopyFrom(duration_pb2.Duration(seconds=10**8))),
     INVALID, "validity_period"),
    ("no feedback mode", "CreateDelivery",
     with_(good(), lambda r: setattr(r, "feedback_mode", 0)), INVALID, "feedback_mode"),
    ("unknown feedback mode", "CreateDelivery",
     with_(good(), lambda r: setattr(r, "feedback_mode", 99)), INVALID, "feedback_mode"),
    ("unknown approval step", "CreateDelivery",
     with_(good(), lambda r: r.required_approvals.append(STEP_7)),
     INVALID, "required_approvals[0]"),
    ("NUL in label", "CreateDelivery", with_(good(), lambda r: setattr(r, "label", "a\x00b")),
     INVALID, "label"),
    ("prepare no id", "PrepareDelivery", pb.PrepareDeliveryRequest(), INVALID, "delivery_id"),
    ("prepare unknown", "PrepareDelivery", pb.PrepareDeliveryRequest(delivery_id=999_999),
     NOT_FOUND, "999999"),
    ("approve unknown step", "ApproveDelivery",
     pb.ApproveDeliveryRequest(delivery_id=1, step=STEP_7), INVALID, "step"),
    ("approve unknown", "ApproveDelivery",
     pb.ApproveDeliveryRequest(delivery_id=999_999, step=pb.APPROVAL_STEP_TARGET),
     NOT_FOUND, "999999"),
    ("confirm negative id", "ConfirmSend", pb.ConfirmSendRequest(delivery_id=-1),
     INVALID, "delivery_id"),
    ("confirm unknown", "ConfirmSend", pb.ConfirmSendRequest(delivery_id=999_999),
     NOT_FOUND, "999999"),
    ("stop unknown", "StopDelivery", pb.StopDeliveryRequest(delivery_id=999_999),
     NOT_FOUND, "999999"),
    ("get unknown", "GetDelivery", pb.GetDeliveryRequest(delivery_id=999_999),
     NOT_FOUND, "999999"),
    ("list negative page", "ListDeliveries", pb.ListDeliveriesRequest(page_size=-1),
     INVALID, "page_size"),
    ("list huge page", "ListDeliveries", pb.ListDeliveriesRequest(page_size=1001),
     INVALID, "page_size"),
    ("list bad token", "ListDeliveries", pb.ListDeliveriesRequest(page_token="garbage!"),
     INVALID, "page_token"),
    ("list unknown state", "ListDeliveries", pb.ListDeliveriesRequest(state=pb.State.ValueType(42)),
     INVALID, "state"),
    ("kpis unknown", "GetKpis", pb.GetKpisRequest(delivery_id=999_999), NOT_FOUND, "999999"),
    ("kpis no id", "GetKpis", pb.GetKpisRequest(), INVALID, "delivery_id"),
    ("stats unknown", "ComputeStats", pb.ComputeStatsRequest(delivery_id=999_999),
     NOT_FOUND, "999999"),
    ("logs negative page", "ListSendingLogs",
     pb.ListSendingLogsRequest(delivery_id=1, page_size=-5), INVALID, "page_size"),
    ("logs unknown status", "ListSendingLogs",
     pb.ListSendingLogsRequest(delivery_id=1, status=STATUS_12), INVALID, "status"),
    ("logs unknown delivery", "ListSendingLogs",
     pb.ListSendingLogsRequest(delivery_id=999_999), NOT_FOUND, "999999"),
    ("logs overflowing token", "ListSendingLogs",
     pb.ListSendingLogsRequest(delivery_id=1, page_token="djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5"),
     INVALID, "page_token"),
    ("history empty", "GetProfileHistory", pb.GetProfileHistoryRequest(), INVALID, "profile"),
    ("history unknown profile", "GetProfileHistory",
     pb.GetProfileHistoryRequest(profile_id="nobody"), NOT_FOUND, "nobody"),
    ("history malformed email", "GetProfileHistory",
     pb.GetProfileHistoryRequest(email="no-at"), INVALID, "email"),
    ("upsert empty", "UpsertProfiles", pb.UpsertProfilesRequest(), INVALID, "profiles"),
    ("upsert no id", "UpsertProfiles",
     pb.UpsertProfilesRequest(profiles=[pb.Profile(email="a@example.com")]),
     INVALID, "profiles[0].profile_id"),
    ("upsert malformed email", "UpsertProfiles",
     pb.UpsertProfilesRequest(profiles=[pb.Profile(profile_id="p", email="nope")]),
     INVALID, "profiles[0].email"),
    ("upsert twice the same id", "UpsertProfiles",
     pb.UpsertProfilesRequest(profiles=[pb.Profile(profile_id="p"), pb.Profile(profile_id="p")]),
     INVALID, "profiles[1].profile_id"),
    ("upsert too many", "UpsertProfiles",
     pb.UpsertProfilesRequest(profiles=[pb.Profile(profile_id=f"p{i}") for i in range(10_001)]),
     INVALID, "profiles"),
    ("recurring no interval", "CreateRecurringDelivery",
     pb.CreateRecurringDeliveryRequest(
         label="r", content=good().content, target=good().target,
         validity_period=duration_pb2.Duration(seconds=60), feedback_mode=pb.FEEDBACK_MODE_EFS),
     INVALID, "interval"),
    ("recurring bad first time", "CreateRecurringDelivery",
     pb.CreateRecurringDeliveryRequest(
         label="r", content=good().content, target=good().target,
         validity_period=duration_pb2.Duration(seconds=60), feedback_mode=pb.FEEDBACK_MODE_EFS,
         interval=duration_pb2.Duration(seconds=60),
         first_occurrence_time=timestamp_pb2.Timestamp(seconds=-10**12)),
     INVALID, "first_occurrence_time"),
    ("recurring unknown", "GetRecurringDelivery",
     pb.GetRecurringDeliveryRequest(recurring_delivery_id=999_999), NOT_FOUND, "999999"),
]  # fmt: skip

AUTHENTICATED = {"ApproveDelivery": "approver", "ConfirmSend": "sender", "StopDelivery": "sender"}


def snapshot(pair: Pair) -> dict[str, int]:
    return {t: pair.sql(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


@pytest.mark.parametrize(
    ("name", "rpc", "request_", "code", "names"), CASES, ids=[c[0] for c in CASES]
)
async def test_refused(
    module_pair: Pair, name: str, rpc: str, request_: Any, code: grpc.StatusCode, names: str
) -> None:
    pair = module_pair
    before = snapshot(pair)
    metadata = getattr(pair, AUTHENTICATED[rpc]) if rpc in AUTHENTICATED else None
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(pair.api, rpc)(request_, metadata=metadata, timeout=30)
    assert err.value.code() == code, err.value.details()
    assert names in (err.value.details() or "")
    if code == INVALID:
        status = rpc_status.from_call(err.value)
        assert status is not None and status.details, "a BadRequest detail names the field"
    assert snapshot(pair) == before


async def test_wrong_state_writes_nothing(module_pair: Pair) -> None:
    pair = module_pair
    delivery = await flows.send(pair, flows.request(["a@example.com"]))
    await flows.wait_state(pair, delivery.id, pb.STATE_SENT)
    # Quiet first: the message's feedback must not land during the comparison.
    (log,) = await flows.logs(pair, delivery.id)
    await flows.wait_event(pair, log.message_id, flows.DELIVERED)
    before = snapshot(pair)
    for rpc, req, who in [
        ("PrepareDelivery", pb.PrepareDeliveryRequest(delivery_id=delivery.id), None),
        ("ApproveDelivery",
         pb.ApproveDeliveryRequest(delivery_id=delivery.id, step=pb.APPROVAL_STEP_TARGET),
         pair.approver),
    ]:  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(pair.api, rpc)(req, metadata=who, timeout=30)
        assert err.value.code() == PRECONDITION
        assert "SENT" in (err.value.details() or "") or "SENDING" in (err.value.details() or "")
    assert snapshot(pair) == before
    stopped = await pair.api.StopDelivery(
        pb.StopDeliveryRequest(delivery_id=delivery.id), metadata=pair.sender
    )
    assert stopped.delivery.state == pb.STATE_STOPPED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pair.api.ConfirmSend(
            pb.ConfirmSendRequest(delivery_id=delivery.id), metadata=pair.sender
        )
    assert err.value.code() == PRECONDITION


async def test_a_page_token_only_continues_the_request_it_came_from(module_pair: Pair) -> None:
    """A token carries its RPC and filters: resuming with other filters, or in another
    RPC, is refused rather than answered with a page of something else."""
    pair = module_pair
    delivery = await flows.create_and_approve(
        pair, flows.request(["p1@example.com", "p2@example.com", "p3@example.com"])
    )

    async def logs_page(token: str = "", **filters: Any) -> pb.ListSendingLogsResponse:
        request = pb.ListSendingLogsRequest(delivery_id=delivery.id, page_size=1, page_token=token)
        for name, value in filters.items():
            setattr(request, name, value)
        got: pb.ListSendingLogsResponse = await pair.api.ListSendingLogs(request, timeout=30)
        return got

    first = await logs_page()
    second = await logs_page(first.next_page_token)
    assert second.sending_logs[0].message_id > first.sending_logs[0].message_id
    deliveries = await pair.api.ListDeliveries(pb.ListDeliveriesRequest(page_size=1), timeout=30)
    for call in (
        logs_page(first.next_page_token, status=pb.SENDING_STATUS_QUEUED),
        logs_page(first.next_page_token, delivery_id=delivery.id + 1),
        logs_page(deliveries.next_page_token),
        pair.api.ListDeliveries(
            pb.ListDeliveriesRequest(state=pb.STATE_APPROVED, page_token=deliveries.next_page_token)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == INVALID
        assert (err.value.details() or "").startswith("page_token: ")


async def test_every_bad_field_of_a_request_is_named_at_once(module_pair: Pair) -> None:
    """Three bad fields: three violations in the BadRequest detail, the first one's text
    as the message, naming the others; the request id comes back as on any call."""
    bad = with_(good(), lambda r: setattr(r, "label", ""))
    bad.content.links.append("javascript:alert(1)")
    bad.ClearField("validity_period")
    call = module_pair.api.CreateDelivery(bad, metadata=[("x-request-id", "three-bad")])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == INVALID
    assert err.value.details() == (
        "content.links[1]: must be an http or https URL"
        " (and 2 more invalid fields: label, validity_period)"
    )
    status = rpc_status.from_call(err.value)
    assert status is not None
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("content.links[1]", "must be an http or https URL"),
        ("label", "required"),
        ("validity_period", "required"),
    ]
    assert ("x-request-id", "three-bad") in tuple(err.value.trailing_metadata() or ())
